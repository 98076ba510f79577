#!/usr/bin/env bash
# The proof on real data: pretrain on the 60,000 Fashion-MNIST training images (labels unused),
# then the linear probe and weighted kNN on the 10,000 test images, and the same two on a
# randomly initialised encoder of the same architecture (the baseline pretraining must beat).
#
# The recipe fits an hour of pretraining on a 2-core VM. Where it fits (BUDGET_MINUTES, 60),
# ResNet-50 3/8 width for 4 epochs on 28 px views; where only 24 px views fit, the same on 24
# px views (50 minutes on the README's slower Xeon, probe 91.8% with the evaluation at 36 px);
# elsewhere ResNet-50 1/4 width for 5 epochs at 28 px. The script decides by timing 12 steps
# of the wider recipe at each size first (about a minute each). The base learning rate is
# 0.3 (x sqrt(batch) = 3.39): 4x SimCLR's small-batch 0.075, which gave the 24 px recipe 91.8%
# instead of 90.8% and a 1-epoch 1/4-width screen 89.0% instead of 87.0% (README); the 28 px
# recipes' figures there (90.8% in 54 minutes, 89.6-90.1% in 33-58) were measured at 0.075.
# The products are bf16 on a CPU with AVX-512 BF16
# (on AMX tiles where the CPU has them; README, --precision bf16), f32 elsewhere. WIDTH,
# EPOCHS, SIZE and PRECISION override the choice; ARCH, BATCH, LR, LOSS (ntxent, dcl, dclw),
# TEMPERATURE, MIN_CROP, JITTER, STEM and WARMUP the rest of the recipe; EVAL_SIZES the image
# sizes the probe picks its evaluation size from.
#
# Usage: bash scripts/fashion-mnist.sh            (recipe above, then evaluation)
#        EPOCHS=2 OUT=runs/quick bash scripts/fashion-mnist.sh
#        ARCH=resnet18 WIDTH=0.5 KNN_EVERY=1 PER_EPOCH=all bash scripts/fashion-mnist.sh
# Re-running continues an interrupted run (--resume) and re-evaluates.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-/usr/share/datasets/fashion-mnist}
OUT=${OUT:-runs/fashion-mnist}
if grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null; then
    PRECISION=${PRECISION:-bf16}
else
    PRECISION=${PRECISION:-f32}
fi
BUDGET_MINUTES=${BUDGET_MINUTES:-60}
ARCH=${ARCH:-resnet50}
BATCH=${BATCH:-128}
LR=${LR:-0.3}
LOSS=${LOSS:-ntxent}
TEMPERATURE=${TEMPERATURE:-0.2}
MIN_CROP=${MIN_CROP:-0.4}
JITTER=${JITTER:-1.0}
STEM=${STEM:-cifar}
WARMUP=${WARMUP:-0.5}
THREADS=${THREADS:-$(nproc)}
# KNN_EVERY=N: the online kNN monitor every N epochs (about 25 s each at the default width).
KNN=()
if [ -n "${KNN_EVERY:-}" ]; then KNN=(--knn-every "$KNN_EVERY"); fi

if [ ! -e "$DATA/train-images-idx3-ubyte.gz" ]; then
    echo "installing Debian's dataset-fashion-mnist…" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y dataset-fashion-mnist; else sudo apt-get install -y dataset-fashion-mnist; fi
fi

cargo build --release -p simclr-cli
SIMCLR=target/release/simclr

# The wider recipe where 12 timed steps of it (the median views/s of the last 10) say its 4
# epochs fit the budget: at 28 px, else at 24 px (the step is about 1.6x faster there, and
# the probe at 24 px, with the evaluation's image size picked below, matched the 28 px run's;
# README); the 1/4-width recipe at 28 px otherwise. Skipped when continuing a run, or when
# WIDTH or EPOCHS is given; SIZE fixes the size tried.
minutes_at() { # $1: image size; prints the estimated minutes of 4 epochs at 3/8 width
    local timing per_epoch
    timing=$(mktemp -d)
    "$SIMCLR" pretrain --data "$DATA" --out "$timing/run" --threads "$THREADS" --arch "$ARCH" \
        --stem "$STEM" --width 0.375 --image-size "$1" --batch-size "$BATCH" --epochs 4 \
        --max-steps 12 --optimizer lars --loss "$LOSS" --precision "$PRECISION" -q \
        >/dev/null 2>"$timing/log" || { cat "$timing/log" >&2; rm -rf "$timing"; return 1; }
    metrics="$timing/run/metrics.jsonl"
    per_epoch=$(grep -o -m 1 '"steps_per_epoch":[0-9]*' "$metrics" | head -n 1 | cut -d: -f2)
    grep -o '"views_per_s":[0-9.e+-]*' "$metrics" | cut -d: -f2 | tail -n 10 |
        sort -g | awk -v batch="$BATCH" -v per_epoch="$per_epoch" '
            { v[NR] = $1 }
            END { med = v[int((NR + 1) / 2)]
                  printf "%.0f", 4 * per_epoch * 2 * batch / med / 60 }'
    rm -rf "$timing"
}
if [ ! -e "$OUT/last.safetensors" ] && [ -z "${WIDTH:-}${EPOCHS:-}" ]; then
    for size in ${SIZE:-28 24}; do
        minutes=$(minutes_at "$size") || exit 1
        echo "$ARCH at 3/8 width and $size px would take about $minutes minutes for 4 epochs" \
            "here (budget $BUDGET_MINUTES)" >&2
        if [ "${minutes:-0}" -gt 0 ] && [ "$minutes" -le "$BUDGET_MINUTES" ]; then
            WIDTH=0.375 EPOCHS=4 SIZE=$size
            break
        fi
    done
    if [ -z "${WIDTH:-}" ]; then WIDTH=0.25 EPOCHS=5 SIZE=${SIZE:-28}; fi
    echo "pretraining at width $WIDTH, $SIZE px, for $EPOCHS epochs" >&2
fi
SIZE=${SIZE:-28}
WIDTH=${WIDTH:-0.25} EPOCHS=${EPOCHS:-5}

start=$(date +%s)
if [ -e "$OUT/last.safetensors" ]; then
    "$SIMCLR" pretrain --resume "$OUT" --threads "$THREADS" "${KNN[@]}"
else
    "$SIMCLR" pretrain --data "$DATA" --out "$OUT" --threads "$THREADS" \
        --arch "$ARCH" --stem "$STEM" --width "$WIDTH" --image-size "$SIZE" --min-crop-scale "$MIN_CROP" \
        --jitter-strength "$JITTER" \
        --batch-size "$BATCH" --epochs "$EPOCHS" --optimizer lars --lr "$LR" --lr-scaling sqrt \
        --warmup-epochs "$WARMUP" --loss "$LOSS" --temperature "$TEMPERATURE" --keep-last "$EPOCHS" \
        --precision "$PRECISION" "${KNN[@]}"
fi
echo "pretraining wall time: $(( $(date +%s) - start )) s" | tee "$OUT/wall-time.txt"

# The evaluations of one checkpoint share its features: linear-probe extracts them into
# $OUT/features (keyed by the weights file, the data and the image size), knn reads them back.
# kNN twice: with Wu et al.'s and lightly's k = 200, τ = 0.1 (simclr's default), and with
# solo-learn's k = 20, τ = 0.07. All of it first at the training size (SIZE), then at the
# size of EVAL_SIZES (28,32,36,40; empty to skip) that the pretrained encoder's probe picks on
# its held-out 10% of the training images (FixRes: the random crops of pretraining showed
# garments larger than whole 28 px images do; README). The random encoder is evaluated at the
# same two sizes (each size of the grid costs a feature extraction of all 70,000 images).
EVAL_SIZES=${EVAL_SIZES-28,32,36,40}
FEATURES=(--cache-dir "$OUT/features")
eval_at() { # $1: checkpoint, $2: extra flags, $3: image size, or a list to pick from
    local args=(--checkpoint "$1" --data "$DATA" --threads "$THREADS" --json "${FEATURES[@]}")
    local probe size
    probe=$("$SIMCLR" linear-probe "${args[@]}" --image-size "$3" $2)
    echo "$probe"
    size=$(grep -o '"image_size":[0-9]*' <<<"$probe" | cut -d: -f2)
    "$SIMCLR" knn "${args[@]}" --image-size "$size" $2
    "$SIMCLR" knn "${args[@]}" --image-size "$size" --k 20 --temperature 0.07 $2
}
{
    eval_at "$OUT/last.safetensors" "" "$SIZE"
    picked=$SIZE
    if [ -n "$EVAL_SIZES" ]; then
        grid=$(eval_at "$OUT/last.safetensors" "" "$EVAL_SIZES")
        echo "$grid"
        picked=$(grep -o -m 1 '"image_size":[0-9]*' <<<"$grid" | cut -d: -f2)
    fi
    eval_at "$OUT/last.safetensors" "--random-init" "$SIZE"
    if [ "$picked" != "$SIZE" ]; then
        eval_at "$OUT/last.safetensors" "--random-init" "$picked"
    fi
} | tee "$OUT/eval.jsonl"

# Probe accuracy against pretraining epochs, from the numbered checkpoints: PER_EPOCH="2 4 6"
# (or PER_EPOCH=all).
if [ -n "${PER_EPOCH:-}" ]; then
    for ckpt in "$OUT"/epoch-*.safetensors; do
        n=$(basename "$ckpt" .safetensors); n=$((10#${n#epoch-}))
        if [ "$PER_EPOCH" != all ] && ! [[ " $PER_EPOCH " == *" $n "* ]]; then continue; fi
        printf 'epoch %s ' "$n"
        "$SIMCLR" linear-probe --checkpoint "$ckpt" --data "$DATA" --threads "$THREADS" --json "${FEATURES[@]}"
    done | tee "$OUT/probe-by-epoch.txt"
fi
