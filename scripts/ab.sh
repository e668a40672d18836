#!/usr/bin/env bash
# Compares two switchboard binaries on one workload, alternating A and B
# runs so that the box's drift (±15% within minutes on a shared 2-core VM)
# hits both alike; prints each run and the min and median server CPU per
# operation. This is how the figures of docs/performance.md's later passes
# were compared: one measured run is not enough to see a 5-10% change.
#
#   scripts/ab.sh OLD_BIN NEW_BIN dm                           # durable (default)
#   AB_RUNS=7 AB_MODE=--ephemeral scripts/ab.sh OLD NEW dm
#   scripts/ab.sh OLD NEW fanout --receivers 1000 --broadcasts 1000 --via api
#
# Each run starts a fresh server pinned to CPU 0 (a fresh data dir when
# durable) with rate limits on but far above the load, as in bench.sh (see
# AB_RATE), and switchboard-bench pinned
# to CPU 1.
# Loopback only; each workload is bounded by the generator's own limits.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 3 ]; then
  echo "usage: scripts/ab.sh BIN_A BIN_B WORKLOAD [ARGS...]" >&2
  exit 2
fi
A=$1 B=$2
shift 2
WORKLOAD=("$@")
RUNS=${AB_RUNS:-5}
MODE=${AB_MODE:-}
# The server's rate limits: on (the default configuration's code path) but
# never tripped, as in bench.sh; AB_RATE="--rate-messages-per-sec 0
# --rate-bytes-per-sec 0" turns them off.
RATE=${AB_RATE:---rate-messages-per-sec 100000000 --rate-bytes-per-sec 100000000000}
BENCH=${AB_BENCH:-target/release/switchboard-bench}
PORT=${AB_PORT:-28895}
for bin in "$A" "$B" "$BENCH"; do
  [ -x "$bin" ] || { echo "ab.sh: $bin is not an executable" >&2; exit 2; }
done

OUT=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$OUT"
}
trap cleanup EXIT

run_one() { # run_one LABEL BIN
  local data=()
  [ -z "$MODE" ] && data=(--data-dir "$OUT/data-$RANDOM")
  # shellcheck disable=SC2086 # RATE and MODE are lists of words
  taskset -c 0 "$2" serve --listen "127.0.0.1:$PORT" $RATE $MODE "${data[@]}" 2>/dev/null &
  SERVER_PID=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
  taskset -c 1 "$BENCH" --target "ws://127.0.0.1:$PORT" --server-pid "$SERVER_PID" "${WORKLOAD[@]}" 2>/dev/null \
    | grep '^{' | sed "s/^{/{\"ab\":\"$1\",/" >> "$OUT/results.jsonl" || true
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  sleep 0.3
}

for i in $(seq "$RUNS"); do
  run_one A "$A"
  run_one B "$B"
done

python3 - "$OUT/results.jsonl" "$A" "$B" <<'PY'
import json, statistics, sys
path, a, b = sys.argv[1:4]
rows = [json.loads(line) for line in open(path)]
by = {}
for r in rows:
    key = (r["ab"], r["workload"], r.get("variant") or r.get("via") or "")
    by.setdefault(key, []).append(r)
for (ab, workload, variant), rs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
    cpu = [r["server_cpu_us_per_op"] for r in rs if r.get("server_cpu_us_per_op") is not None]
    rate = [r["rate"] for r in rs if r.get("rate") is not None]
    if not cpu:
        continue
    name = a if ab == "A" else b
    print(f"{ab} {workload:7} {variant:10} runs {len(cpu)}  µs/op min {min(cpu):.2f} median {statistics.median(cpu):.2f}"
          f"  rate median {statistics.median(rate)/1e3:.0f}k/s  ({name})")
PY
