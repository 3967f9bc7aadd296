#!/usr/bin/env bash
# The delivery benchmarks quoted in BENCHMARKS.md, end to end: release builds, a fresh coreq
# (HTTPS webhook, test CA, fresh data dir) for every run, `coreq-loadgen --both` (the ceiling and
# then coreq, in the same run), and the median of RUNS runs per scenario.
#
#   loadgen/bench.sh [RUNS]        # default 5 runs per scenario; about 15 minutes on 2 cores
#
# Raw reports (one JSON file per run) go to $OUT (default /tmp/coreq-bench). Everything talks
# to 127.0.0.1 only; every run is bounded by --count and the load generator's own deadlines.
set -euo pipefail

RUNS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/coreq-bench}
PORT=${PORT:-18181}
PASSWORD='Adm1n-Passw0rd!'
BIN=$ROOT/target/release

cargo build --release --locked -p coreq -p coreq-loadgen --manifest-path "$ROOT/Cargo.toml"
mkdir -p "$OUT"
rm -f "$OUT"/*.json
CA=$("$BIN/coreq-loadgen" --init-ca --ca-dir "$OUT/ca")

COREQ_PID=
start_coreq() {
    rm -rf "$OUT/data"
    COREQ_ADMIN_PASSWORD=$PASSWORD COREQ_WEBHOOK_CA=$CA COREQ_LOG=warn \
        "$BIN/coreq" serve --data-dir "$OUT/data" --listen "127.0.0.1:$PORT" >"$OUT/coreq.log" 2>&1 &
    COREQ_PID=$!
    # Ready once login answers something other than 503 (recovering) or nothing at all.
    for _ in $(seq 100); do
        if ! kill -0 "$COREQ_PID" 2>/dev/null; then
            echo "coreq exited (port $PORT taken by another process?); see $OUT/coreq.log" >&2
            exit 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$PORT/v1/users/login" || true)
        if [[ $code != 503 && $code != 000 ]]; then return 0; fi
        sleep 0.1
    done
    echo "coreq did not become ready; see $OUT/coreq.log" >&2
    exit 1
}

stop_coreq() {
    kill "$COREQ_PID" 2>/dev/null || true
    wait "$COREQ_PID" 2>/dev/null || true
}
trap stop_coreq EXIT

# scenario NAME LOADGEN-ARGS...: RUNS runs, each against a fresh coreq.
scenario() {
    local name=$1
    shift
    for i in $(seq "$RUNS"); do
        start_coreq
        echo "== $name, run $i/$RUNS" >&2
        COREQ_LOADGEN_PASSWORD=$PASSWORD "$BIN/coreq-loadgen" --both --json --quiet \
            --target "http://127.0.0.1:$PORT" --tls --ca-dir "$OUT/ca" "$@" >"$OUT/$name.$i.json"
        stop_coreq
    done
}

scenario enqueue-batch1 --prefill --batch 1 --concurrency 16 --count 50000 --webhook-concurrency 24
scenario delivery-c6 --prefill --batch 100 --concurrency 4 --count 200000 --webhook-concurrency 6
scenario delivery-c24 --prefill --batch 100 --concurrency 4 --count 200000 --webhook-concurrency 24
scenario latency-1000s --rate 1000 --count 30000 --batch 1 --concurrency 16 --webhook-concurrency 24

python3 - "$OUT" <<'PY'
import glob, json, statistics, sys

out = sys.argv[1]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")

print(f"{'scenario':<16}{'runs':>5}{'enqueue/s':>12}{'delivery/s':>12}{'ceiling/s':>12}{'ratio':>7}"
      f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'ceil p99':>9}{'dups':>6}{'lost':>6}")
for name in ["enqueue-batch1", "delivery-c6", "delivery-c24", "latency-1000s"]:
    runs = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/{name}.*.json"))]
    if not runs:
        continue
    c = [r["coreq"] for r in runs]
    k = [r["ceiling"] for r in runs]
    lat = lambda rs, q: med([(r["latency_ms"] or {}).get(q) for r in rs])
    print(f"{name:<16}{len(runs):>5}{med([x['enqueue_per_sec'] for x in c]):>12.0f}"
          f"{med([x['delivery_per_sec'] for x in c]):>12.0f}{med([x['delivery_per_sec'] for x in k]):>12.0f}"
          f"{med([r.get('ratio') for r in runs]):>7.2f}{lat(c, 'p50'):>9.2f}{lat(c, 'p99'):>9.2f}"
          f"{lat(c, 'max'):>9.1f}{lat(k, 'p99'):>9.2f}{sum(x['duplicates'] for x in c):>6}"
          f"{sum(x['lost'] for x in c):>6}")
PY
