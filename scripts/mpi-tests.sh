#!/usr/bin/env bash
# Data-parallel checks under Open MPI (2 ranks, on any machine: more ranks than cores is
# fine). Installs Open MPI from Debian if missing, builds with the `mpi` feature, then:
#   1. the MPI test binary (crates/simclr-train/tests/mpi.rs) under mpirun -np 2;
#   2. `mpirun -np 2 simclr pretrain` with a global batch that does not divide: a clear error;
#   3. a rank killed with SIGKILL mid-run ends the whole job, non-zero, within seconds;
#   4. only rank 0 writes, and the 2-rank run matches 1 process for its first steps.
# BENCH=1 adds the scaling measurement (1 rank × 2 threads against 2 ranks × 1 thread).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mpirun >/dev/null || [[ ! -e /usr/include/x86_64-linux-gnu/mpi/mpi.h && ! -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ]]; then
    echo "mpi-tests: installing Open MPI (libopenmpi-dev openmpi-bin) and libclang-dev" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenmpi-dev openmpi-bin libclang-dev >/dev/null
fi
# As root, in a container, with more ranks than cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
MPIRUN=(mpirun -np 2 --oversubscribe -x RAYON_NUM_THREADS=1)

cargo build --release --locked -p simclr-cli --features mpi
bin=target/release/simclr
test_bin=$(cargo test --release --locked -p simclr-train --features mpi --test mpi --no-run \
    --message-format=json 2>/dev/null | python3 scripts/test-executables.py mpi)

echo "== 1. the MPI test binary, 2 ranks"
timeout 600 "${MPIRUN[@]}" "$test_bin"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
small=(pretrain --width 0.125 --image-size 16 --threads 1 -q)

echo "== 2. a global batch that does not divide by the ranks"
if "${MPIRUN[@]}" "$bin" "${small[@]}" --batch-size 33 --out "$tmp/odd" >"$tmp/odd.log" 2>&1; then
    echo "FAILED: an odd global batch was accepted"; exit 1
fi
grep -q "must divide by the 2 ranks" "$tmp/odd.log" || { cat "$tmp/odd.log"; echo "FAILED: no clear message"; exit 1; }
echo "ok: $(grep -m1 'must divide' "$tmp/odd.log")"

echo "== 3. a rank killed mid-run ends the job"
"${MPIRUN[@]}" "$bin" "${small[@]}" --batch-size 32 --epochs 100 --out "$tmp/kill" >"$tmp/kill.log" 2>&1 &
job=$!
for _ in $(seq 1 600); do
    [[ -s "$tmp/kill/metrics.jsonl" ]] && break
    sleep 0.1
done
victim=$(pgrep -P "$job" -f "simclr pretrain" | tail -1) # a rank, child of mpirun
[[ -n "$victim" ]] || { echo "FAILED: no rank found"; exit 1; }
start=$(date +%s.%N)
kill -9 "$victim"
set +e
timeout 60 tail --pid="$job" -f /dev/null
wait "$job"; rc=$?
set -e
took=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
if ((rc == 0)); then echo "FAILED: mpirun exited 0 after a rank was killed"; exit 1; fi
if python3 -c "import sys; sys.exit(0 if $took < 30 else 1)"; then
    echo "ok: mpirun exited with status $rc, ${took} s after rank pid $victim was killed"
else
    echo "FAILED: mpirun took ${took} s to exit"; exit 1
fi

echo "== 4. 2 ranks × 16 against 1 process × 32 through the CLI, first 5 steps"
"${MPIRUN[@]}" "$bin" "${small[@]}" --batch-size 32 --max-steps 5 --out "$tmp/two" >/dev/null 2>&1
RAYON_NUM_THREADS=1 "$bin" "${small[@]}" --batch-size 32 --max-steps 5 --out "$tmp/one" >/dev/null 2>&1
python3 - "$tmp" <<'PY'
import json, sys
d = sys.argv[1]
read = lambda r: [json.loads(l)["loss"] for l in open(f"{d}/{r}/metrics.jsonl") if "event" not in l]
one, two = read("one"), read("two")
diff = max(abs(a - b) for a, b in zip(one, two))
print(f"losses 1 process: {one}\nlosses 2 ranks:   {two}\nlargest difference {diff:.2e}")
assert len(one) == len(two) == 5 and diff < 1e-5, "the 2-rank run differs"
PY

if [[ "${BENCH:-0}" == 1 ]]; then
    echo "== scaling: ResNet-18 ¼ width, 2×128 views of 28×28×1, 40 steps on the bundled sample"
    bench=(pretrain --width 0.25 --image-size 28 --batch-size 128 --max-steps 40 -q)
    "$bin" "${bench[@]}" --threads 2 --out "$tmp/b1" 2>&1 | grep -E "img/s" || true
    "${MPIRUN[@]}" "$bin" "${bench[@]}" --threads 1 --out "$tmp/b2" 2>&1 | grep -E "img/s|traffic" || true
    python3 - "$tmp" <<'PY'
import json, sys
d = sys.argv[1]
for r in ("b1", "b2"):
    v = [json.loads(l)["views_per_s"] for l in open(f"{d}/{r}/metrics.jsonl") if "event" not in l][5:]
    v.sort()
    print(f"{r}: median {v[len(v)//2]:.1f} views/s over {len(v)} steps")
PY
fi
echo "mpi-tests: all passed"
