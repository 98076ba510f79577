#!/usr/bin/env bash
# Two-view augmentation throughput (images/s; each image gives two views): 32x32 RGB without
# blur and 96x96 RGB with blur (p = 0.5), on 1 and 2 threads. One JSON line per measurement.
# Run on an otherwise idle machine: the figures are wall-clock.
#
# Usage: bash scripts/bench-augment.sh [--images N]
set -euo pipefail
cd "$(dirname "$0")/.."
images=4000
[ "${1:-}" = "--images" ] && images=$2
cargo build --release -q -p simclr-augment --example augment_throughput
bin=target/release/examples/augment_throughput
for threads in 1 2; do
  "$bin" --size 32 --images "$images" --threads "$threads"
  "$bin" --size 96 --images "$((images / 4))" --threads "$threads" --blur
done
