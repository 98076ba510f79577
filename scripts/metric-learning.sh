#!/usr/bin/env bash
# Self-supervised against labelled metric learning on Fashion-MNIST, one encoder and budget
# for each: SimCLR (no labels), SupCon, contrastive pairs from labels, triplets (semi-hard)
# and ArcFace, plus a random encoder of the same architecture. For each: recall@1, mAP@R
# (test queries against the training gallery) and the linear-probe top-1 on the test split;
# a markdown table and the best one's `neighbors` grid.
#
#   bash scripts/metric-learning.sh [FASHION_MNIST_DIR]   # default /usr/share/datasets/fashion-mnist
#
# Environment: EPOCHS (2), WIDTH (0.125), OUT (runs/metric-learning). About 35 minutes on a
# 2-core VM at the defaults; the time is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

data=${1:-/usr/share/datasets/fashion-mnist}
epochs=${EPOCHS:-2}
width=${WIDTH:-0.125}
out=${OUT:-runs/metric-learning}
if [[ ! -d $data ]]; then
    echo "metric-learning: no Fashion-MNIST at $data (Debian: apt install dataset-fashion-mnist)" >&2
    exit 1
fi
cargo build --release --locked -q -p simclr-cli
bin=$PWD/target/release/simclr
mkdir -p "$out"
start=$(date +%s)

common=(--data "$data" --arch resnet18 --width "$width" --image-size 28 --epochs "$epochs"
    --warmup-epochs 0.2 --seed 0 --quiet)
# Labelled runs: class-balanced batches of all 10 classes × 25 images (250 images, against
# SimCLR's 256).
balanced=(--classes-per-batch 10 --images-per-class 25)
declare -A recipe=(
    [simclr]="--loss ntxent --batch-size 256"
    [supcon]="--loss supcon --temperature 0.1 ${balanced[*]}"
    [contrastive]="--loss contrastive --pairs labels --margin 0.5 ${balanced[*]}"
    [triplet]="--loss triplet --pairs labels --mining semi-hard --margin 0.2 ${balanced[*]}"
    [arcface]="--loss arcface --margin 0.5 --scale 64 ${balanced[*]}"
)
order=(simclr supcon contrastive triplet arcface)

evaluate() { # name weights → one JSON line of metrics
    local name=$1 weights=$2
    "$bin" embed --weights "$weights" --data "$data" --out "$out/$name.gallery.safetensors" >/dev/null 2>&1
    local r p
    r=$("$bin" neighbors --weights "$weights" --gallery "$out/$name.gallery.safetensors" \
        --query "$data" --eval --json 2>/dev/null)
    p=$("$bin" linear-probe --checkpoint "$weights" --data "$data" --json 2>/dev/null)
    python3 - "$name" "$r" "$p" <<'PY'
import json, sys
name, r, p = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(json.dumps({"name": name, "recall@1": r["recall@1"], "map_at_r": r["map_at_r"],
                  "probe_top1": p["top1"], "search_s": r["search_s"]}))
PY
}

results=$out/results.jsonl
: >"$results"
for name in "${order[@]}"; do
    echo "== $name: ${recipe[$name]}"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    "$bin" pretrain "${common[@]}" ${recipe[$name]} --out "$out/$name" 2>&1 | grep -E "^finished|^error" || true
    "$bin" export --checkpoint "$out/$name" --out "$out/$name.safetensors" >/dev/null 2>&1
    line=$(evaluate "$name" "$out/$name.safetensors")
    echo "$line" | tee -a "$results"
    echo "   $(( $(date +%s) - t0 )) s"
done
echo "== random encoder (the same architecture, untrained)"
"$bin" export --checkpoint "$out/simclr" --random-init --out "$out/random.safetensors" >/dev/null 2>&1
evaluate random "$out/random.safetensors" | tee -a "$results"

best=$(python3 -c "
import json
rows = [json.loads(l) for l in open('$results') if l.strip()]
print(max((r for r in rows if r['name'] != 'random'), key=lambda r: r['map_at_r'])['name'])")
"$bin" neighbors --weights "$out/$best.safetensors" --gallery "$out/$best.gallery.safetensors" \
    --query "$data" --k 8 --grid "$out/neighbors-$best.png" --grid-rows 10 >/dev/null 2>&1
echo "== $out/neighbors-$best.png: the hits of the best (by mAP@R)"

python3 - "$results" "$epochs" "$width" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\nFashion-MNIST, ResNet-18 width {sys.argv[3]}, 28 px, {sys.argv[2]} epochs each;")
print("test queries (10,000) against the training gallery (60,000):\n")
print("| objective | recall@1 | mAP@R | linear probe top-1 |")
print("| --- | --- | --- | --- |")
for r in rows:
    print(f"| {r['name']} | {100*r['recall@1']:.1f}% | {100*r['map_at_r']:.1f}% | {100*r['probe_top1']:.1f}% |")
PY
echo "metric-learning: $(( $(date +%s) - start )) s in all"
