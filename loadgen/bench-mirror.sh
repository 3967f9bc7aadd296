#!/usr/bin/env bash
# Mirror lag at a steady 1,000 callbacks/s: release builds, a fresh coreq (fresh data dir, fresh
# mirror tables) for every run, `coreq-loadgen --rate 1000 --count 30000 --batch 1` (plain-HTTP
# webhook at its receiver), and `GET /v1/support` sampled every 200 ms for `replication`.
#
#   loadgen/bench-mirror.sh [RUNS]       # default 3 runs per engine; ~1.5 minutes per round of engines
#
# Engines (ENGINES="pg mysql" picks a subset): `none` is coreq without a mirror (the control for
# the delivery figures), `pg` and `mysql` mirror into COREQ_TEST_PG_URL / COREQ_TEST_MYSQL_URL
# (defaults below) under the table prefix bench_mirror_<pid>_<engine><run>_, dropped after the run
# (with psql / mysql). Runs are interleaved (run 1 of every engine before run 2 of any).
#
# Per run: lag_records and lag_seconds over the steady part (from 5 s after the first enqueue to
# the last one: p50 / p99 / max), whether the lag reached 0 within 30 s after the load generator
# finished (it finishes once every callback was delivered), the load generator's delivered/s,
# end-to-end latency and errors, and coreq's CPU seconds. Raw files go to $OUT (default
# /tmp/bench-mirror). Everything talks to 127.0.0.1 only; every wait is bounded (load generator
# --duration/--drain-timeout and an outer `timeout`, the sampler's sample count and its 30 s
# settle limit). The coreq this script starts is stopped by its process id after each run and on
# exit.
#
# Settings: PORT (18183), RATE (1000), COUNT (30000), CARGO_TARGET_DIR (<repo>/target), NO_BUILD=1.
set -euo pipefail

RUNS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/bench-mirror}
PORT=${PORT:-18183}
RATE=${RATE:-1000}
COUNT=${COUNT:-30000}
ENGINES=${ENGINES:-none pg mysql}
PG_URL=${COREQ_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
MYSQL_URL=${COREQ_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
PASSWORD='Adm1n-Passw0rd!'
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release

if [[ ${NO_BUILD:-} != 1 ]]; then
    cargo build --release -p coreq -p coreq-loadgen --manifest-path "$ROOT/Cargo.toml"
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.samples "$OUT"/*.start "$OUT"/*.cpu "$OUT"/*.log "$OUT"/*.rc
if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/"; then
    echo "something already listens on 127.0.0.1:$PORT; stop it or set PORT" >&2
    exit 1
fi
{
    echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "machine:  nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -sr)"
    echo "commit:   $(git -C "$ROOT" rev-parse --short HEAD) ($(git -C "$ROOT" status --porcelain | wc -l) paths changed but not committed)"
    echo "load:     $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "runs:     $RUNS per engine ($ENGINES); $COUNT callbacks at $RATE/s, batch 1"
} | tee "$OUT/machine.txt" >&2

PREFIX= CURRENT_ENGINE=
# shellcheck source=loadgen/coreq-process.sh
source "$(dirname "$0")/coreq-process.sh"

# drop_tables ENGINE: the mirror tables of $PREFIX.
drop_tables() {
    local tables
    tables=$(printf "${PREFIX}coreq_%s," mirror_position messages message_statuses callbacks settings schema_migrations)
    case $1 in
        pg) psql "$PG_URL" -qc "DROP TABLE IF EXISTS ${tables%,}" ;;
        mysql)
            # The mysql client takes no URL: split it (mysql://user[:password]@host[:port]/db).
            local -a args
            mapfile -t args < <(python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1])
print("-h" + p.hostname, "-P" + str(p.port or 3306), "-u" + u.unquote(p.username or "root"), sep="\n")
print("-p" + u.unquote(p.password) if p.password else "--skip-password", p.path.lstrip("/"), sep="\n")' "$MYSQL_URL")
            mysql "${args[@]}" -e "DROP TABLE IF EXISTS ${tables%,}"
            ;;
    esac
}

cleanup() {
    stop_coreq
    if [[ -n $PREFIX ]]; then drop_tables "$CURRENT_ENGINE" || echo "could not drop ${PREFIX}coreq_*" >&2; fi
    PREFIX=
}
trap cleanup EXIT

start_mirrored() { # start_mirrored ENGINE LOG: coreq mirroring into ENGINE (none, pg, mysql)
    local engine=$1 log=$2 db=()
    case $engine in
        pg) db=(--database-url "$PG_URL") ;;
        mysql) db=(--database-url "$MYSQL_URL") ;;
    esac
    WA_DB_NAME_PREFIX=$PREFIX start_coreq "$log" --allow-http-webhooks "${db[@]}"
}

# The sampler: GET /v1/support every 200 ms, one JSON line per sample (t, replication); at most
# 2,000 samples. Once DONE_FILE exists (the load generator finished) it keeps sampling until
# the lag is 0 or 30 s have passed, then exits.
sample() { # sample SAMPLES-FILE DONE-FILE
    python3 - "$PORT" "$PASSWORD" "$1" "$2" <<'PY'
import base64, json, os, sys, time, urllib.request

port, password, out, done_file = sys.argv[1:]
base = f"http://127.0.0.1:{port}"
def call(method, path, headers):
    req = urllib.request.Request(base + path, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=2) as resp:
        return json.load(resp)
basic = base64.b64encode(f"admin:{password}".encode()).decode()
token = call("POST", "/v1/users/login", {"Authorization": f"Basic {basic}"})["users"][0]["token"]
done_at = None
with open(out, "w") as f:
    for _ in range(2000):
        t = time.time()
        try:
            rep = call("GET", "/v1/support", {"Authorization": f"Bearer {token}"})["support"]["replication"]
        except Exception as e:  # a slow answer is a sample too: note it and go on
            rep = {"sample_error": str(e)}
        f.write(json.dumps({"t": t, **rep}) + "\n")
        f.flush()
        if done_at is None and os.path.exists(done_file):
            done_at = t
        if done_at is not None and (rep.get("lag_records") in (0, None) or t - done_at > 30):
            break
        time.sleep(max(0.0, 0.2 - (time.time() - t)))
PY
}

run() { # run ENGINE I
    local engine=$1 i=$2 name=$1.$2 rc=0
    CURRENT_ENGINE=$engine
    PREFIX=
    if [[ $engine != none ]]; then PREFIX="bench_mirror_$$_${engine}${i}_"; fi
    start_mirrored "$engine" "$OUT/$name.log"
    rm -f "$OUT/$name.done"
    sample "$OUT/$name.samples" "$OUT/$name.done" &
    local sampler=$!
    echo "== $engine, run $i/$RUNS${PREFIX:+ (tables ${PREFIX}coreq_*)}" >&2
    date +%s.%N >"$OUT/$name.start"
    COREQ_LOADGEN_PASSWORD=$PASSWORD timeout 600 "$BIN/coreq-loadgen" --json --quiet \
        --target "http://127.0.0.1:$PORT" --rate "$RATE" --count "$COUNT" --batch 1 --concurrency 16 \
        --webhook-concurrency 24 --duration 300 --drain-timeout 60 >"$OUT/$name.json" || rc=$?
    echo "$rc" >"$OUT/$name.rc"
    touch "$OUT/$name.done"
    wait "$sampler" || echo "   the sampler failed (see $OUT/$name.samples)" >&2
    # coreq's CPU time (user + system) over its whole life, start-up included.
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$COREQ_PID/stat" >"$OUT/$name.cpu" || true
    if [[ $rc != 0 ]]; then echo "   coreq-loadgen exited with $rc" >&2; fi
    cleanup
}

for i in $(seq "$RUNS"); do
    for engine in $ENGINES; do
        run "$engine" "$i"
    done
done
rm -rf "$OUT/data"

python3 - "$OUT" "$COUNT" $ENGINES <<'PY' | tee "$OUT/summary.md"
import glob, json, os, statistics, sys

out, count, engines = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] if xs else None
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def show(x, fmt):
    return "-" if x is None else format(x, fmt)
def behind(run, q):  # ms of WAL at the run's rate that the lag percentile amounts to
    lag = pct(run["recs"], q)
    return None if lag is None or not run["wal_rate"] else lag / run["wal_rate"] * 1000

print(open(f"{out}/machine.txt").read())
print("| engine | runs (ok) | lag records p50 / p99 / max | ≈ ms behind p50 / p99 | lag_seconds p50 / p99 / max | "
      "lag 0 after load | WAL records/s | delivered/s | e2e p50 / p99 ms | enqueue errors | lost | dups | coreq CPU s | mirror errors |")
print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
bad = 0
for engine in engines:
    rows = []
    for path in sorted(glob.glob(f"{out}/{engine}.*.json")):
        name = path[:-5]
        try:
            report = json.load(open(path))
        except ValueError:
            bad += 1
            continue
        start = float(open(name + ".start").read())
        samples = [json.loads(l) for l in open(name + ".samples")] if os.path.exists(name + ".samples") else []
        # The steady part: 5 s after the first enqueue until the last one.
        steady = [s for s in samples if start + 5 <= s["t"] <= start + report["enqueue_secs"]]
        recs = [s["lag_records"] for s in steady if s.get("lag_records") is not None]
        secs = [s["lag_seconds"] for s in steady if s.get("lag_seconds") is not None]
        # WAL records per second over the steady part, to turn records behind into time behind.
        lsns = [(s["t"], s["mirrored_lsn"]) for s in steady if s.get("mirrored_lsn") is not None]
        wal_rate = (lsns[-1][1] - lsns[0][1]) / (lsns[-1][0] - lsns[0][0]) if len(lsns) > 1 else None
        last = samples[-1] if samples else {}
        settled = None if engine == "none" else (last.get("lag_records") == 0)
        cpu = float(open(name + ".cpu").read()) if os.path.exists(name + ".cpu") else None
        log = open(name + ".log").read() if os.path.exists(name + ".log") else ""
        rc = open(name + ".rc").read().strip()
        ok = rc == "0" and report.get("drained") and settled is not False and report["acked"] == count
        bad += not ok
        rows.append(dict(ok=ok, recs=recs, secs=secs, settled=settled, cpu=cpu, report=report, wal_rate=wal_rate,
                         errors=log.count("mirror: session failed")))
        print(f"<!-- {os.path.basename(name)}: lag records p50 {pct(recs, 50)} p99 {pct(recs, 99)} max {max(recs, default=None)}; "
              f"lag s p99 {show(pct(secs, 99), '.3f')} max {show(max(secs, default=None), '.3f')}; "
              f"{len(steady)} steady samples; WAL {show(wal_rate, '.0f')} records/s; last {last}; "
              f"delivered/s {report['delivery_per_sec']}; rc {rc} -->")
    if not rows:
        continue
    m = lambda f: med([f(r) for r in rows])
    lat = lambda q: m(lambda r: (r["report"].get("latency_ms") or {}).get(q))
    settled = "-" if engine == "none" else f"{sum(bool(r['settled']) for r in rows)} of {len(rows)}"
    print(f"| {engine} | {len(rows)} ({sum(r['ok'] for r in rows)}) "
          f"| {show(m(lambda r: pct(r['recs'], 50)), '.0f')} / {show(m(lambda r: pct(r['recs'], 99)), '.0f')} / {show(m(lambda r: max(r['recs'], default=None)), '.0f')} "
          f"| {show(m(lambda r: behind(r, 50)), '.0f')} / {show(m(lambda r: behind(r, 99)), '.0f')} "
          f"| {show(m(lambda r: pct(r['secs'], 50)), '.3f')} / {show(m(lambda r: pct(r['secs'], 99)), '.3f')} / {show(m(lambda r: max(r['secs'], default=None)), '.3f')} "
          f"| {settled} | {show(m(lambda r: r['wal_rate']), ',.0f')} | {show(m(lambda r: r['report']['delivery_per_sec']), ',.0f')} "
          f"| {show(lat('p50'), '.2f')} / {show(lat('p99'), '.2f')} "
          f"| {sum(sum(r['report']['enqueue_errors'].values()) for r in rows)} | {sum(r['report']['lost'] for r in rows)} "
          f"| {sum(r['report']['duplicates'] for r in rows)} | {show(m(lambda r: r['cpu']), '.1f')} | {sum(r['errors'] for r in rows)} |")
print()
print("Medians over the runs of each engine (per run: the percentile over the steady samples, 200 ms apart).")
print("≈ ms behind: lag_records ÷ the WAL records/s mirrored over the steady part (the age of the oldest unmirrored")
print("record at a steady rate); lag_seconds is coreq's own lag clock, as /v1/support reports it.")
print("enqueue errors, lost, dups, mirror errors (`mirror: session failed` in coreq's log): totals over the runs.")
if bad:
    print(f"\n**{bad} run(s) failed, did not drain or did not reach lag 0**: see {out}")
sys.exit(1 if bad else 0)
PY
