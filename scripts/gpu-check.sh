#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, from the binaries scripts/cuda-build.sh put
# in gpu-bin/ (nothing is compiled here). At most about 8 minutes on one H100/H200:
#   1. CPU-vs-CUDA agreement of one ResNet-18 + head + NT-Xent step (f32 and bf16);
#   2. simclr pretrain / linear-probe / embed / export with --device cuda on the bundled sample;
#   3. the training step at 2×512 views of 32×32×3 (ResNet-18, CIFAR stem), f32 and bf16,
#      beside PyTorch's (gpu-bin/torch_reference.py, if PyTorch is installed), with views/s,
#      the ratio and the peak GPU memory.
# Writes everything to ${OUT:-gpu-check-out}/ (log, JSON lines, table.md).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=gpu-bin
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
log="$out/gpu-check.log"
exec > >(tee "$log") 2>&1
fail=0

# cuda-build.sh ships the binaries xz-compressed.
for f in "$bin"/*.xz; do
    [[ -e "$f" ]] || continue
    if command -v xz >/dev/null; then
        xz -dkf "$f"
    else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3], "wb"))' "$f"
    fi
    chmod +x "${f%.xz}"
done

# The CUDA libraries the binaries link (cuBLAS, cuRAND, NVRTC): a CUDA toolkit's, or the
# wheels PyTorch installs beside itself.
if py=$(command -v python3) && d=$("$py" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]) + "/nvidia")' 2>/dev/null); then
    for lib in "$d"/cu13/lib "$d"/*/lib; do
        [[ -d "$lib" ]] && LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
fi
for lib in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -d "$lib" ]] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$lib"
done
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if ! ldd "$bin/simclr" | grep -q "not found"; then :; else
    echo "missing libraries:"; ldd "$bin/simclr" | grep "not found"; exit 1
fi

# Peak GPU memory of a command: nvidia-smi sampled every 100 ms while it runs (MiB).
peak_mem() {
    local f; f=$(mktemp)
    (while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >>"$f" 2>/dev/null; sleep 0.1; done) &
    local sampler=$!
    "$@"
    local rc=$?
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    PEAK=$(sort -n "$f" | tail -1); rm -f "$f"
    return $rc
}

echo "== 1. CPU vs CUDA, one step (ResNet-18, 2×64 views of 32×32×3)"
"$bin/device_agreement" --device cuda --precision f32 --batch 64 --tol 1e-3 | tee "$out/agreement.jsonl" || fail=1
"$bin/device_agreement" --device cuda --precision bf16 --batch 64 --tol 1e-1 | tee -a "$out/agreement.jsonl" || fail=1

echo "== 2. the commands with --device cuda"
run=$out/run
timeout 300 "$bin/simclr" pretrain --device cuda --out "$run" -q || fail=1
timeout 300 "$bin/simclr" pretrain --device cuda --precision bf16 --out "$out/run-bf16" -q || fail=1
timeout 120 "$bin/simclr" linear-probe --device cuda --checkpoint "$run" --json | tee "$out/probe.json" || fail=1
timeout 120 "$bin/simclr" export --device cuda --checkpoint "$run" --out "$out/encoder.safetensors" || fail=1
timeout 120 "$bin/simclr" embed --device cuda --weights "$out/encoder.safetensors" --out "$out/emb.npy" || fail=1

echo "== 3. the training step, 2×512 views of 32×32×3"
table="$out/table.md"
echo "| step, ResNet-18 CIFAR stem, 2×512 views 32×32×3 | simclr-rs views/s | PyTorch views/s | ratio | peak GPU MiB (ours / PyTorch) |" >"$table"
echo "| --- | --- | --- | --- | --- |" >>"$table"
have_torch=0
[[ -f "$bin/torch_reference.py" ]] && python3 -c 'import torch, torchvision' 2>/dev/null && have_torch=1
for prec in f32 bf16; do
    peak_mem "$bin/bench_step" --device cuda --precision "$prec" --batch 512 --size 32 --steps 10 --warmup 3 >"$out/ours-$prec.json"
    ours_mem=$PEAK
    ours=$(python3 -c "import json;print(json.load(open('$out/ours-$prec.json'))['views_per_s'])" 2>/dev/null || echo nan)
    theirs=nan; theirs_mem=""
    if ((have_torch)); then
        flag=""; [[ $prec == bf16 ]] && flag=--bf16
        peak_mem python3 "$bin/torch_reference.py" step --device cuda --batch 512 --size 32 $flag >"$out/torch-$prec.json"
        theirs_mem=$PEAK
        theirs=$(python3 -c "import json;print(json.loads(open('$out/torch-$prec.json').read().splitlines()[-1])['views_per_s'])" 2>/dev/null || echo nan)
    fi
    ratio=$(python3 -c "print(f'{$ours/$theirs:.2f}×')" 2>/dev/null || echo -)
    echo "| $prec | $ours | $theirs | $ratio | $ours_mem / ${theirs_mem:--} |" >>"$table"
done
cat "$table"
((fail)) && echo "gpu-check: FAILED (see above)" || echo "gpu-check: all passed"
exit $fail
