#!/usr/bin/env bash
# Image folders larger than memory, measured on this machine:
#   1. generates a labelled folder of IMAGES JPEGs (50,000 by default; 128x96 to 176x132,
#      10 classes) with scripts/make-jpeg-folder.py, once, under ~/.cache/simclr-rs/ (outside
#      git; FOLDER_ROOT overrides), and views of its first 5,000 and 20,000 images (symlinks);
#   2. peak resident memory of `simclr pretrain` (ResNet-18 1/8 width, 96 px views, batch 64,
#      30 steps, 2 loader workers) on each, read lazily and through the decoded cache
#      (--cache), with the time to build the cache and the views/s of the run;
#   3. loader throughput, decode + two augmented views (images/s, no model): ours lazily and
#      from the cache against torchvision's ImageFolder + DataLoader(num_workers=2) with the
#      same transforms, on the same folder.
# Prints a table and writes bench-results/folder-<date>.json.
#
# Usage: bash scripts/bench-folder.sh [IMAGES]
# Needs the PyTorch venv of scripts/bench.sh (.venv-torch, or TORCH_VENV) for the generator
# (numpy, Pillow) and the torchvision side. Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-50000}
size=${SIZE:-96}
venv=${TORCH_VENV:-.venv-torch}
root=${FOLDER_ROOT:-$HOME/.cache/simclr-rs/folder-bench}
py="$venv/bin/python"
if [ ! -x "$py" ]; then
    echo "creating the PyTorch venv in $venv (torch, torchvision from PyPI)…" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch torchvision
fi

full="$root/full-$n"
if [ ! -f "$full/.complete" ]; then
    echo "generating $n JPEGs in $full…" >&2
    rm -rf "$full"
    "$py" scripts/make-jpeg-folder.py "$full" "$n"
    touch "$full/.complete"
fi
# Views of the first k images of each class folder, by symlink.
subset() {
    local k=$1 dir="$root/sub-$1"
    if [ ! -f "$dir/.complete" ]; then
        rm -rf "$dir"
        for c in "$full"/class_*; do
            mkdir -p "$dir/$(basename "$c")"
            find "$c" -name '*.jpg' | sort | head -n $((k / 10)) |
                while read -r f; do ln -s "$f" "$dir/$(basename "$c")/"; done
        done
        touch "$dir/.complete"
    fi
    echo "$dir"
}

cargo build --release -q -p simclr-cli
cargo build --release -q -p simclr-train --example loader_throughput
simclr=target/release/simclr
loader=target/release/examples/loader_throughput
results=bench-results/folder-$(date -u +%Y%m%dT%H%M%SZ).json
mkdir -p bench-results
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One pretraining run: peak RSS (MiB), wall seconds, median views/s of its steps.
pretrain() {
    local data=$1 cache=${2:-}
    rm -rf "$tmp/run"
    local extra=()
    [ -n "$cache" ] && extra=(--cache "$cache")
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$tmp/rss" "$simclr" pretrain --data "$data" --out "$tmp/run" \
        --arch resnet18 --width 0.125 --image-size "$size" --batch-size 64 --epochs 1 \
        --max-steps 30 --warmup-epochs 0 --workers 2 --threads 2 "${extra[@]}" \
        >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
    t1=$(date +%s.%N)
    "$py" - "$tmp/rss" "$tmp/run/metrics.jsonl" "$t0" "$t1" <<'EOF'
import json, statistics, sys
rss = int(open(sys.argv[1]).read().split()[-1]) / 1024
steps = [json.loads(l) for l in open(sys.argv[2]) if '"views_per_s"' in l]
vps = statistics.median(s["views_per_s"] for s in steps[5:] or steps)
print(json.dumps({"peak_rss_mib": round(rss, 1), "wall_s": round(float(sys.argv[4]) - float(sys.argv[3]), 2),
                  "views_per_s": round(vps, 1)}))
EOF
}

echo '{"images": '"$n"', "size": '"$size"', "runs": [' >"$results"
first=1
emit() {
    [ $first = 1 ] || echo ',' >>"$results"
    first=0
    echo "$1" >>"$results"
}
for k in 5000 20000 "$n"; do
    [ "$k" -le "$n" ] || continue
    data=$([ "$k" = "$n" ] && echo "$full" || subset "$k")
    rm -rf "$tmp/cache"
    for mode in none build reuse; do
        echo "pretrain, $k images, cache: $mode…" >&2
        line=$(pretrain "$data" "$([ $mode = none ] || echo "$tmp/cache")")
        emit "{\"what\": \"pretrain\", \"images\": $k, \"cache\": \"$mode\", \"result\": $line}"
    done
done
# The loader alone on the whole folder (the cache of the last run above is the whole folder's).
echo "loader throughput…" >&2
for cmd in "$loader --data $full --size $size --workers 2" \
    "$loader --data $full --size $size --workers 2 --cache $tmp/cache" \
    "$py scripts/torch_folder_loader.py --data $full --size $size --workers 2"; do
    # shellcheck disable=SC2086
    line=$($cmd)
    emit "{\"what\": \"loader\", \"result\": $line}"
done
echo ']}' >>"$results"

"$py" - "$results" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"\n{r['images']} JPEGs, {r['size']} px views\n")
print("| pretrain (30 steps) | images | peak RSS MiB | wall s | views/s |")
print("| --- | ---: | ---: | ---: | ---: |")
for x in r["runs"]:
    if x["what"] == "pretrain":
        m = x["result"]
        print(f"| {x['cache']} | {x['images']} | {m['peak_rss_mib']} | {m['wall_s']} | {m['views_per_s']} |")
print("\n| loader (decode + 2 views) | images/s | open s | peak RSS MiB |")
print("| --- | ---: | ---: | ---: |")
for x in r["runs"]:
    if x["what"] == "loader":
        m = x["result"]
        name = m["framework"] + (" (cache)" if m.get("cached") else "")
        rss = m.get("peak_rss_mib", m.get("peak_rss_mib_largest_process"))
        print(f"| {name} | {m['images_per_s']:.0f} | {m['open_s']:.1f} | {rss:.0f} |")
EOF
echo "wrote $results" >&2
