#!/usr/bin/env bash
# Crash trials: what a killed run and a full disk leave behind.
#
#   bash scripts/crash-trials.sh          # 20 kill -9 trials and the full-disk cases
#   TRIALS=3 bash scripts/crash-trials.sh # the fast version CI runs
#
# 1. kill -9: a 3-epoch run on the bundled sample (1/16-width ResNet-18, 16 px views, one
#    checkpoint per epoch) is killed at a random moment, then continued with
#    `simclr pretrain --resume DIR` (or started again with the same flags when it died before
#    its first checkpoint), and its final checkpoint is compared with an uninterrupted run's:
#    every tensor byte for byte, and the metadata. Each trial's kill time is printed; the
#    seed of the moments is SEED (default: the date).
# 2. A full disk (a small tmpfs; needs root): a checkpoint, an `export` and an `embed` that do
#    not fit must each fail with an error naming the file and leave the previous file under
#    the final name loadable, and no half-written file.
set -euo pipefail
cd "$(dirname "$0")/.."

trials=${TRIALS:-20}
seed=${SEED:-$(date +%s)}
cargo build --release --locked -q -p simclr-cli
bin=$PWD/target/release/simclr
tmp=$(mktemp -d)
mnt=$tmp/full
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
run=(pretrain --width 0.0625 --image-size 16 --batch-size 128 --proj-dim 32 --epochs 3
    --threads 1 --quiet)

# Tensors byte for byte and the metadata of two checkpoints; prints the first difference.
same_checkpoint() {
    python3 - "$1" "$2" <<'PY'
import json, struct, sys

def read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = b[8 + n:]
    return meta, {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
                  for k, v in header.items()}

(ma, ta), (mb, tb) = read(sys.argv[1]), read(sys.argv[2])
if ta.keys() != tb.keys():
    sys.exit(f"tensor names differ: {sorted(ta.keys() ^ tb.keys())[:5]}")
for k in sorted(ta):
    if ta[k] != tb[k]:
        sys.exit(f"tensor {k} differs")
if ma != mb:
    diff = [k for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k)]
    sys.exit(f"metadata differs: {diff}")
print(f"identical: {len(ta)} tensors, {len(ma)} metadata fields")
PY
}

echo "== the uninterrupted run"
time "$bin" "${run[@]}" --out "$tmp/reference" >/dev/null 2>&1
reference=$tmp/reference/last.safetensors
duration=$(python3 -c "import json; print(sum(1 for l in open('$tmp/reference/metrics.jsonl') if 'event' not in l))")
echo "reference: $duration steps"
start=$(date +%s.%N)
"$bin" "${run[@]}" --out "$tmp/timing" >/dev/null 2>&1
seconds=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
echo "one run takes ${seconds}s here; kill moments are drawn in [0.2, ${seconds}] s (seed $seed)"

echo "== $trials kill -9 trials"
ok=0
for ((i = 1; i <= trials; i++)); do
    out=$tmp/trial-$i
    at=$(python3 -c "import random; r = random.Random($seed * 1000 + $i); print(f'{r.uniform(0.2, $seconds):.2f}')")
    "$bin" "${run[@]}" --out "$out" >"$out.log" 2>&1 &
    pid=$!
    sleep "$at"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    resumes=0
    # Resume until the run finishes (a resume is itself never killed here).
    if [[ -f $out/last.safetensors ]]; then
        how="resumed from epoch $(python3 -c "
import json, struct
b = open('$out/last.safetensors', 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
print(json.loads(b[8:8 + n])['__metadata__']['epoch'])")"
        "$bin" pretrain --resume "$out" --threads 1 --quiet >>"$out.log" 2>&1 || {
            echo "trial $i: killed at ${at}s, the resume failed:"
            tail -5 "$out.log"
            continue
        }
        resumes=1
    else
        how="no checkpoint yet, started again"
        "$bin" "${run[@]}" --out "$out" >>"$out.log" 2>&1 || {
            echo "trial $i: killed at ${at}s before the first checkpoint; the fresh start failed:"
            tail -5 "$out.log"
            continue
        }
    fi
    if verdict=$(same_checkpoint "$reference" "$out/last.safetensors" 2>&1); then
        ok=$((ok + 1))
        echo "trial $i: killed at ${at}s, $how ($resumes resume): $verdict"
    else
        echo "trial $i: killed at ${at}s, $how: DIFFERS: $verdict"
    fi
    rm -rf "$out"
done
echo "kill -9: $ok/$trials identical to the uninterrupted run"

echo "== a full disk"
full_ok=1
# Room for two checkpoints and a half: the first epoch's checkpoint and last.safetensors fit,
# the second epoch's does not.
size=$(($(stat -c %s "$reference") * 5 / 2 / 1024))k
if [[ $(id -u) != 0 ]] || ! { mkdir -p "$mnt" && mount -t tmpfs -o "size=$size" tmpfs "$mnt"; }; then
    echo "full disk: skipped (needs root to mount a small tmpfs)"
else
    small=(pretrain --width 0.0625 --image-size 16 --batch-size 128 --proj-dim 32 --epochs 2
        --threads 1 --keep-last 5 --quiet)
    if "$bin" "${small[@]}" --out "$mnt/run" >"$tmp/full.log" 2>&1; then
        echo "full disk: the run fitted in $size; the case was not exercised"
        full_ok=0
    else
        if grep -q "No space left on device" "$tmp/full.log" && [[ -f $mnt/run/last.safetensors ]] &&
            "$bin" inspect "$mnt/run/last.safetensors" >/dev/null 2>&1; then
            echo "checkpoint: $(grep -m1 '^error' "$tmp/full.log"); last.safetensors still loads"
        else
            echo "checkpoint: FAILED:"
            cat "$tmp/full.log"
            ls -la "$mnt/run" || true
            full_ok=0
        fi
    fi
    # export and embed into the full disk, over a previous good file.
    cp "$reference" "$tmp/ckpt.safetensors"
    rm -rf "$mnt/run"
    "$bin" export --checkpoint "$tmp/ckpt.safetensors" --out "$mnt/encoder.safetensors" >/dev/null 2>&1
    before=$(sha256sum "$mnt/encoder.safetensors" | cut -d' ' -f1)
    head -c $((($(df --output=avail -B1 "$mnt" | tail -1)) - 4096)) /dev/zero >"$mnt/filler" || true
    for cmd in "export --checkpoint $tmp/ckpt.safetensors --with-head --out $mnt/encoder.safetensors" \
        "embed --weights $tmp/ckpt.safetensors --out $mnt/encoder.safetensors"; do
        # shellcheck disable=SC2086
        if "$bin" $cmd >"$tmp/w.log" 2>&1; then
            echo "${cmd%% *}: wrote into a full disk?"
            full_ok=0
        elif [[ $(sha256sum "$mnt/encoder.safetensors" | cut -d' ' -f1) == "$before" ]] &&
            ! ls "$mnt" | grep -qv -e '^encoder.safetensors$' -e '^filler$'; then
            echo "${cmd%% *}: $(grep -m1 '^error' "$tmp/w.log"); the previous file is untouched, no temporary left"
        else
            echo "${cmd%% *}: FAILED:"
            cat "$tmp/w.log"
            ls -la "$mnt"
            full_ok=0
        fi
    done
fi

if ((ok == trials && full_ok == 1)); then
    echo "crash-trials: $ok/$trials kill -9 trials identical; full disk handled"
else
    echo "crash-trials: FAILED ($ok/$trials identical, full disk ok: $full_ok)" >&2
    exit 1
fi
