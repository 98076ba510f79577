#!/usr/bin/env bash
# Builds the CUDA binaries a GPU machine needs, on any machine (no GPU needed): a stripped
# release `simclr` with the `cuda` feature and the two examples scripts/gpu-check.sh runs
# (device_agreement, bench_step), xz-compressed into gpu-bin/ (git-ignored), with a copy of
# the PyTorch reference the check races. Checks that they fit in the 60 MiB a GPU machine is
# sent.
#
#   bash scripts/cuda-build.sh          # then, on the GPU machine: bash scripts/gpu-check.sh
#
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200), SIMCLR_CUDA_DIR (see cuda-toolkit.sh),
# SIMCLR_CUDA_TARGET_DIR (default ~/.cache/simclr-rs/target-cuda: apart from the CPU build,
# kept between clones; the first build compiles candle's CUDA kernels, about 15 minutes on 2
# cores).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash scripts/cuda-toolkit.sh)"
# Outside the clone by default, so that repeated builds (CI on one machine, say) reuse it.
export CARGO_TARGET_DIR="${SIMCLR_CUDA_TARGET_DIR:-$HOME/.cache/simclr-rs/target-cuda}"
out=gpu-bin
mkdir -p "$out"

cargo build --release --locked --features cuda -p simclr-cli --bin simclr
cargo build --release --locked --features cuda -p simclr-train \
    --example device_agreement --example bench_step

for f in "$CARGO_TARGET_DIR/release/simclr" \
    "$CARGO_TARGET_DIR/release/examples/device_agreement" \
    "$CARGO_TARGET_DIR/release/examples/bench_step"; do
    strip -o "$out/$(basename "$f")" "$f"
done
reference=../shared/bench/torch_reference.py
if [[ -f "$reference" ]]; then
    cp "$reference" "$out/torch_reference.py"
else
    echo "cuda-build: $reference not found; gpu-check.sh will skip the PyTorch race" >&2
fi

# The binaries link the CUDA libraries dynamically (the driver's libcuda.so.1 and the
# toolkit's cuBLAS, cuRAND and runtime at run time): list what they need.
echo "== needed shared libraries (simclr)"
readelf -d "$out/simclr" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p'
# candle's kernels make each binary about 60 MB (PTX text and cubins), which compresses
# about sevenfold: gpu-check.sh unpacks them on the GPU machine.
for f in simclr device_agreement bench_step; do
    xz -T0 -6 -f "$out/$f"
done
size=$(du -cb "$out"/* | tail -1 | cut -f1)
echo "== $out: $(du -ch "$out"/* | tail -1 | cut -f1) in all"
ls -l "$out"
if ((size > 60 * 1024 * 1024)); then
    echo "cuda-build: $out is over 60 MiB" >&2
    exit 1
fi
