#!/usr/bin/env bash
# Fuzzes the parsers simclr-rs runs on files it did not write (cargo-fuzz, libFuzzer, nightly):
# the IDX reader (raw and gzip), the CIFAR-10 reader, image decoding in the folder reader,
# exported weights and checkpoints (loading and --resume), and the TOML run configuration.
#
#   bash scripts/fuzz.sh               # every target for 60 s (the CI smoke)
#   bash scripts/fuzz.sh 720           # every target for 12 minutes (72 minutes in all)
#   bash scripts/fuzz.sh 600 idx       # one target
#
# Seeds are the small real files under fuzz/corpus/<target>; the corpus a run grows is kept in
# ~/.cache/simclr-rs/fuzz-corpus/<target> (outside git) and reused by the next run. A crash
# leaves its input in fuzz/artifacts/<target>/ and fails the script; every crash found becomes
# a regression test. Prints one line per target: executions, coverage, peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(idx cifar10 image_folder weights checkpoint config)
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly install cargo-fuzz --locked
fi

# No sanitizer: the parsers are safe Rust, and what fuzzing looks for here is a panic, an
# overflow (debug assertions are on), a hang or an allocation the file's size does not justify.
# Built outside the clone by default (SIMCLR_FUZZ_TARGET_DIR), so repeated runs reuse it.
fuzz_target=${SIMCLR_FUZZ_TARGET_DIR:-$HOME/.cache/simclr-rs/target-fuzz}
cargo +nightly fuzz build -s none -O --target-dir "$fuzz_target" 2>&1 | tail -1
bin_dir=$fuzz_target/x86_64-unknown-linux-gnu/release
work=${SIMCLR_FUZZ_CORPUS:-$HOME/.cache/simclr-rs/fuzz-corpus}
# Each target's libFuzzer output is kept (the last run's) beside the corpus.
logs=${SIMCLR_FUZZ_LOGS:-$HOME/.cache/simclr-rs/fuzz-logs}
mkdir -p "$logs"
trap 'rm -rf /dev/shm/simclr-fuzz-* 2>/dev/null || true' EXIT

max_len() {
    case $1 in
        checkpoint | weights) echo 262144 ;;
        idx | cifar10) echo 65536 ;;
        *) echo 16384 ;;
    esac
}

printf '%-14s %8s %12s %10s %8s %8s\n' target seconds executions exec/s cov peak_MB
failed=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    log="$logs/$t.log"
    # A 2 GB memory limit: a file of at most 256 KB that makes a reader allocate more is a
    # finding, as is an input that takes over 10 s.
    # The binaries built above, run directly: `cargo fuzz run` would rebuild each target
    # from the working tree as it is at that moment.
    if ! "$bin_dir/$t" "$work/$t" "fuzz/corpus/$t" \
        -max_total_time="$seconds" -max_len="$(max_len "$t")" -rss_limit_mb=2048 \
        -timeout=10 -print_final_stats=1 -artifact_prefix="$PWD/fuzz/artifacts/$t/" \
        >"$log" 2>&1; then
        failed=1
        echo "== $t FAILED; its input is in fuzz/artifacts/$t/:" >&2
        grep -E "panicked|ERROR|SUMMARY|Test unit written|out-of-memory|timeout" "$log" |
            head -20 >&2 || true
        echo "   (the whole output: $log)" >&2
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
    peak=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1 || true)
    cov=$({ grep -oE 'cov: [0-9]+' "$log" || true; } | tail -1 | cut -d' ' -f2)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1 || true)
    rate=$(( ${runs:-0} / (${secs:-$seconds} > 0 ? ${secs:-$seconds} : 1) ))
    printf '%-14s %8s %12s %10s %8s %8s\n' "$t" "${secs:-?}" "${runs:-?}" "$rate" "${cov:-?}" "${peak:-?}"
done
exit $failed
