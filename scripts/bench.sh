#!/usr/bin/env bash
# simclr-rs against PyTorch on this machine, in one run:
#   1. the SimCLR training step (ResNet CIFAR stem + head + NT-Xent, forward, backward,
#      SGD-momentum update; in f32, and where the CPU has AVX-512 BF16 also with bf16
#      convolution products against PyTorch's CPU autocast to bf16): ResNet-18 at 2x128 views of 32x32x3, its 1/4-width variant at
#      2x128 views of 28x28x1, and ResNet-50 1/4 width at 2x128 views of 28x28x1 (the
#      Fashion-MNIST recipe's shape): views/s, median of 5 steps after 2 warm-up steps, in
#      ROUNDS rounds (3 by default) that alternate simclr-rs and PyTorch, so that the
#      machine's slow spells hit both; the table gives the medians and the spread of the
#      per-round ratios;
#   2. the same three shapes as `simclr pretrain` runs them (LARS, the loader's thread, the
#      augmentations, metrics): the median views/s of its metrics.jsonl over 12 steps after
#      the first 2, beside PyTorch's bare step (Fashion-MNIST when installed, else the bundled
#      sample; for 32x32x3, a generated folder of 4,000 JPEGs through --cache);
#   3. feature extraction (resize, normalise, eval forward; what linear-probe, knn and embed
#      do) against PyTorch's eval forward of the same encoder on ready tensors;
#   4. two-view augmentation throughput at 32x32 and at 96x96 with blur, 1 and 2 threads;
#   5. peak resident memory of each;
# then one table (ours, PyTorch's, the ratio, our share of the machine's fp32 peak) and a JSON
# copy in bench-results/.
#
# The reference is ../shared/bench/torch_reference.py (override with TORCH_REFERENCE); its venv
# is created on first use in .venv-torch/ (ignored by git; a few GB from PyPI; override with
# TORCH_VENV).
#
# Usage: bash scripts/bench.sh            full run (about 10 minutes on 2 cores)
#        bash scripts/bench.sh --smoke    tiny sizes, seconds; PyTorch only if its venv exists
#        bash scripts/bench.sh --no-torch our side only
# Run on an otherwise idle machine: every figure is wall-clock.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
torch=1
for a in "$@"; do
    case "$a" in
        --smoke) smoke=1 ;;
        --no-torch) torch=0 ;;
        *) echo "unknown option $a" >&2; exit 2 ;;
    esac
done
threads=${THREADS:-2}
ref=${TORCH_REFERENCE:-../shared/bench/torch_reference.py}
venv=${TORCH_VENV:-.venv-torch}

if [ "$torch" = 1 ]; then
    if [ ! -f "$ref" ]; then
        echo "note: no PyTorch reference at $ref; measuring simclr-rs only" >&2
        torch=0
    elif [ ! -x "$venv/bin/python" ]; then
        if [ "$smoke" = 1 ]; then
            torch=0
        else
            echo "creating the PyTorch venv in $venv (torch, torchvision from PyPI)…" >&2
            python3 -m venv "$venv"
            "$venv/bin/pip" install -q torch torchvision
        fi
    fi
fi

# One invocation: built one package at a time, each unifies features differently and builds
# its own copy of candle, gemm and image (three release builds of them instead of one); this
# set is the same as `cargo build --release -p simclr-cli`'s.
cargo build --release -q -p simclr-cli -p simclr-train -p simclr-augment -p simclr-eval \
    --bin simclr --example bench_step --example augment_throughput --example embed_throughput
step=target/release/examples/bench_step
aug=target/release/examples/augment_throughput
embed=target/release/examples/embed_throughput
simclr=target/release/simclr

if [ "$smoke" = 1 ]; then
    steps=(
        "--arch resnet18 --width 0.125 --batch 8 --size 16 --channels 3 --steps 1 --warmup 1"
        "--arch resnet18 --width 0.125 --batch 8 --size 16 --channels 1 --steps 1 --warmup 1"
    )
    images=200
else
    steps=(
        "--arch resnet18 --width 1.0 --batch 128 --size 32 --channels 3 --steps 5 --warmup 2"
        "--arch resnet18 --width 0.25 --batch 128 --size 28 --channels 1 --steps 5 --warmup 2"
        "--arch resnet50 --width 0.25 --batch 128 --size 28 --channels 1 --steps 5 --warmup 2"
    )
    images=4000
fi

results=$(mktemp)
trap 'rm -f "$results"' EXIT
rounds=${ROUNDS:-$([ "$smoke" = 1 ] && echo 1 || echo 3)}
# On a CPU with AVX-512 BF16 each step also runs with bf16 convolution products (ours:
# `--precision bf16`; PyTorch: `--bf16`, its CPU autocast to bf16).
precisions=(f32)
if grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null; then precisions+=(bf16); fi
for round in $(seq "$rounds"); do
    for s in "${steps[@]}"; do
        for p in "${precisions[@]}"; do
            ours=() theirs=()
            if [ "$p" = bf16 ]; then ours=(--precision bf16) theirs=(--bf16); fi
            echo "step $s $p (round $round of $rounds)" >&2
            # shellcheck disable=SC2086
            RAYON_NUM_THREADS=$threads "$step" $s "${ours[@]}" | tee -a "$results"
            if [ "$torch" = 1 ]; then
                # shellcheck disable=SC2086
                "$venv/bin/python" "$ref" step $s --threads "$threads" "${theirs[@]}" | tee -a "$results"
            fi
        done
    done
done
# `simclr pretrain` on the step's shapes: its own views/s from metrics.jsonl.
run_dir=$(mktemp -d)
trap 'rm -f "$results"; rm -rf "$run_dir"' EXIT
fmnist=/usr/share/datasets/fashion-mnist
rgb_folder=${RGB_FOLDER:-$HOME/.cache/simclr-rs/bench-rgb-4000}
for s in "${steps[@]}"; do
    # shellcheck disable=SC2086
    set -- $s
    arch=$2 width=$4 batch=$6 size=$8 channels=${10}
    # Feature extraction on the step's encoder.
    n_embed=$([ "$smoke" = 1 ] && echo 64 || echo 2048)
    RAYON_NUM_THREADS=$threads "$embed" --arch "$arch" --width "$width" --size "$size" --channels "$channels" --images "$n_embed" | tee -a "$results"
    if [ "$torch" = 1 ]; then
        "$venv/bin/python" scripts/torch_eval_forward.py --reference "$ref" --arch "$arch" --width "$width" \
            --size "$size" --channels "$channels" --images "$n_embed" --threads "$threads" | tee -a "$results"
    fi
    data=()
    if [ "$channels" = 3 ]; then
        if [ "$torch" != 1 ]; then
            echo "note: no venv for the RGB folder generator; pretrain at ${size}x${size}x3 left out" >&2
            continue
        fi
        if [ ! -f "$rgb_folder/.complete" ]; then
            "$venv/bin/python" scripts/make-jpeg-folder.py "$rgb_folder" 4000
            touch "$rgb_folder/.complete"
        fi
        data=(--data "$rgb_folder" --cache "$HOME/.cache/simclr-rs/bench-rgb-cache")
    elif [ -d "$fmnist" ]; then
        data=(--data "$fmnist")
    fi
    max_steps=$([ "$smoke" = 1 ] && echo 3 || echo 14)
    echo "pretrain $arch w$width ${batch}x${size}x${size}x$channels" >&2
    rm -rf "$run_dir/run"
    "$simclr" pretrain "${data[@]}" --out "$run_dir/run" --arch "$arch" --width "$width" \
        --image-size "$size" --batch-size "$batch" --max-steps "$max_steps" --threads "$threads" \
        >"$run_dir/log" 2>&1 || { cat "$run_dir/log" >&2; exit 1; }
    python3 - "$run_dir/run/metrics.jsonl" "$arch" "$width" "$batch" "$size" "$channels" <<'EOF' | tee -a "$results"
import json, statistics, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"views_per_s"' in l]
arch, width, batch, size, channels = sys.argv[2], float(sys.argv[3]), *map(int, sys.argv[4:])
print(json.dumps({"bench": "pretrain", "framework": "simclr-rs", "arch": arch, "width": width,
                  "views": 2 * batch, "size": size, "channels": channels, "steps": len(steps),
                  "views_per_s": statistics.median(s["views_per_s"] for s in steps[2:] or steps),
                  "data_wait_s_median": statistics.median(s["data_wait_s"] for s in steps[2:] or steps)}))
EOF
done

for t in 1 2; do
    "$aug" --size 32 --images "$images" --threads "$t" | tee -a "$results"
    "$aug" --size 96 --images "$((images / 4))" --threads "$t" --blur | tee -a "$results"
done
if [ "$torch" = 1 ]; then
    # torchvision's pipeline runs in one process (its thread count does not apply to PIL).
    "$venv/bin/python" "$ref" augment --size 32 --images "$((images / 2))" --threads 1 | tee -a "$results"
    "$venv/bin/python" "$ref" augment --size 96 --images "$((images / 8))" --threads 1 --blur | tee -a "$results"
fi

mkdir -p bench-results
name="bench-results/$(date -u +%Y%m%dT%H%M%SZ)-$(git rev-parse --short HEAD 2>/dev/null || echo unknown).json"
python3 scripts/bench_table.py "$results" "$name"
