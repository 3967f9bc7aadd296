#!/usr/bin/env bash
# Message throughput, end to end: release builds, a fresh coreq (fresh data dir) for every run,
# `coreq-loadgen --messages`, and the median (and range) of RUNS runs per scenario.
#
#   loadgen/bench-messages.sh [RUNS]     # default 5 runs per scenario
#
# Scenarios (SCENARIOS="accept-c16 sim-delivered-g8" picks a subset):
#
#   accept-c16          coreq --gateway none; POST /v1/messages, 16 in flight, COUNT_ACCEPT messages:
#                       durable acceptance (each 201 only once the message is durable)
#   accept-c64          the same with 64 in flight
#   sim-delivered-g8    coreq --gateway sim --sim-delay-ms 1 --gateway-concurrency 8; 16 POSTs in
#                       flight, COUNT_SIM messages, webhook (plain HTTP, 24 in flight) at the load
#                       generator's receiver, sent/delivered/read callbacks on; measured from the
#                       first POST until every accepted message's `delivered` callback arrived
#   sim-delivered-g32   the same with --gateway-concurrency 32
#   sim-delivered-g32-noread
#                       the same with webhooks.message.read=false (sent and delivered callbacks only)
#   sim-paced-1000      as sim-delivered-g32 but paced at 1,000 messages/s (COUNT_PACED messages):
#                       end-to-end latency below saturation (flat out, the latency is mostly the
#                       wait in the backlog that builds up)
#
# Runs are interleaved (run 1 of every scenario before run 2 of any), so that a noisy stretch of
# a shared machine does not land on one scenario only. Raw reports (one JSON file per run) and
# coreq's log of each run go to $OUT (default /tmp/bench-msg); coreq's data dir is $OUT/data,
# removed before every run. Everything talks to 127.0.0.1 only; every run is bounded by --count,
# --duration, --drain-timeout and an outer `timeout`. The coreq this script starts is stopped by
# its process id after each run (and on exit).
#
# Settings: PORT (18182), COUNT_ACCEPT (20000), COUNT_SIM (20000), COUNT_PACED (10000), SIM_DELAY_MS (1),
# CARGO_TARGET_DIR (<repo>/target), NO_BUILD=1 to use the binaries already built.
set -euo pipefail

RUNS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/bench-msg}
PORT=${PORT:-18182}
COUNT_ACCEPT=${COUNT_ACCEPT:-20000}
COUNT_SIM=${COUNT_SIM:-20000}
SIM_DELAY_MS=${SIM_DELAY_MS:-1}
COUNT_PACED=${COUNT_PACED:-10000}
SCENARIOS=${SCENARIOS:-accept-c16 accept-c64 sim-delivered-g8 sim-delivered-g32 sim-delivered-g32-noread sim-paced-1000}
PASSWORD='Adm1n-Passw0rd!'
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release

if [[ ${NO_BUILD:-} != 1 ]]; then
    # Someone may be editing the tree: a failed build is retried a few times, a minute apart.
    for attempt in 1 2 3 4 5; do
        if cargo build --release -p coreq -p coreq-loadgen --manifest-path "$ROOT/Cargo.toml"; then
            break
        fi
        if [[ $attempt == 5 ]]; then
            echo "the build failed 5 times" >&2
            exit 1
        fi
        echo "build failed (attempt $attempt); retrying in 60 s" >&2
        sleep 60
    done
fi

mkdir -p "$OUT/logs"
rm -f "$OUT"/*.json "$OUT"/*.rc "$OUT"/*.cpu "$OUT"/*.lgcpu "$OUT"/logs/*.log

if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/"; then
    echo "something already listens on 127.0.0.1:$PORT; stop it or set PORT" >&2
    exit 1
fi

{
    echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "machine:  nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -sr)"
    echo "memory:   $(free -h | awk '/^Mem:/ {print $2}')"
    echo "data dir: $(findmnt -no FSTYPE,SOURCE -T "$OUT" | tr -s ' ')"
    echo "commit:   $(git -C "$ROOT" rev-parse --short HEAD) ($(git -C "$ROOT" status --porcelain | wc -l) paths changed but not committed)"
    echo "binaries: coreq built $(date -u -r "$BIN/coreq" '+%Y-%m-%d %H:%M:%S UTC')$([[ ${NO_BUILD:-} == 1 ]] && echo ' (NO_BUILD=1: not rebuilt, may predate the commit above)')"
    echo "load:     $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "runs:     $RUNS per scenario; messages: accept $COUNT_ACCEPT, sim $COUNT_SIM; sim delay $SIM_DELAY_MS ms"
} | tee "$OUT/machine.txt" >&2
if [[ $(findmnt -no FSTYPE -T "$OUT") == tmpfs ]]; then
    echo "WARNING: $OUT is on tmpfs: fsync costs nothing there, durable acceptance is overstated" >&2
fi

# shellcheck source=loadgen/coreq-process.sh
source "$(dirname "$0")/coreq-process.sh"
trap stop_coreq EXIT

# run NAME I: one run of scenario NAME against a fresh coreq.
run() {
    local name=$1 i=$2 coreq_args loadgen_args
    case $name in
        accept-c16) coreq_args=(--gateway none); loadgen_args=(--concurrency 16 --count "$COUNT_ACCEPT") ;;
        accept-c64) coreq_args=(--gateway none); loadgen_args=(--concurrency 64 --count "$COUNT_ACCEPT") ;;
        sim-delivered-g8 | sim-delivered-g32 | sim-delivered-g32-noread)
            local g=${name#sim-delivered-g}
            coreq_args=(--gateway sim --sim-delay-ms "$SIM_DELAY_MS" --gateway-concurrency "${g%-noread}"
                --allow-http-webhooks)
            loadgen_args=(--through-sim --concurrency 16 --count "$COUNT_SIM" --webhook-concurrency 24)
            if [[ $name == *-noread ]]; then loadgen_args+=(--no-read); fi
            ;;
        sim-paced-1000)
            coreq_args=(--gateway sim --sim-delay-ms "$SIM_DELAY_MS" --gateway-concurrency 32 --allow-http-webhooks)
            loadgen_args=(--through-sim --rate 1000 --concurrency 16 --count "$COUNT_PACED" --webhook-concurrency 24)
            ;;
        *) echo "unknown scenario $name" >&2; exit 1 ;;
    esac
    start_coreq "$OUT/logs/$name.$i.log" "${coreq_args[@]}"
    echo "== $name, run $i/$RUNS: coreq ${coreq_args[*]}; coreq-loadgen --messages ${loadgen_args[*]}" >&2
    local rc=0
    # In a subshell whose only children are `timeout` and the load generator, so that `times`
    # gives the load generator's CPU (user and system, second line).
    (
        status=0
        COREQ_LOADGEN_PASSWORD=$PASSWORD timeout 900 "$BIN/coreq-loadgen" --messages --json --quiet \
            --target "http://127.0.0.1:$PORT" --duration 300 --drain-timeout 300 "${loadgen_args[@]}" \
            >"$OUT/$name.$i.json" || status=$?
        # Not in a pipeline: that would run `times` in a child shell with no children.
        times >"$OUT/$name.$i.lgcpu"
        sed -i -n 2p "$OUT/$name.$i.lgcpu"
        exit $status
    ) || rc=$?
    echo "$rc" >"$OUT/$name.$i.rc"
    # coreq's CPU time (user + system, clock ticks) over its whole life, start-up included.
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$COREQ_PID/stat" >"$OUT/$name.$i.cpu" || true
    if [[ $rc != 0 ]]; then
        echo "   coreq-loadgen exited with $rc (report: $OUT/$name.$i.json, coreq log: $OUT/logs/$name.$i.log)" >&2
    fi
    stop_coreq
}

for i in $(seq "$RUNS"); do
    for name in $SCENARIOS; do
        run "$name" "$i"
    done
done

python3 - "$OUT" $SCENARIOS <<'PY' | tee "$OUT/summary.md"
import glob, json, os, statistics, sys

out, names = sys.argv[1], sys.argv[2:]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")
def rng(xs):
    xs = [x for x in xs if x is not None]
    return f"{min(xs):,.0f}–{max(xs):,.0f}" if xs else "-"
def lat(runs, key, q):
    return med([(r.get(key) or {}).get(q) for r in runs])

print(open(f"{out}/machine.txt").read())
def seconds(path):
    text = open(path).read().strip()
    if path.endswith(".lgcpu"):
        # `times`: "0m1.234s 0m0.567s", user then system
        total = 0.0
        for part in text.split():
            m, s = part.rstrip("s").split("m")
            total += int(m) * 60 + float(s)
        return total
    return float(text)

def cpu_us(name, ext):
    # CPU µs per accepted message (coreq: .cpu; the load generator: .lgcpu), median over runs.
    xs = []
    for path in sorted(glob.glob(f"{out}/{name}.*.{ext}")):
        report = path[: -len(ext) - 1] + ".json"
        try:
            secs, accepted = seconds(path), json.load(open(report))["accepted"]
        except (ValueError, OSError, KeyError):
            continue
        if accepted:
            xs.append(secs * 1e6 / accepted)
    return f"{med(xs):,.0f}" if xs else "-"

print("| scenario | runs (ok) | msgs/s, median | range | × 20/s | × 250/s | p50 ms | p99 ms | CPU µs/msg coreq / loadgen | accepted/s (sim) | callbacks sent/delivered/read | dups | missing |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
failed = 0
for name in names:
    runs, ok = [], 0
    for path in sorted(glob.glob(f"{out}/{name}.*.json")):
        rc = open(path[:-5] + ".rc").read().strip() if os.path.exists(path[:-5] + ".rc") else "?"
        try:
            r = json.load(open(path))
        except (ValueError, OSError):
            failed += 1
            print(f"<!-- {path}: no report (exit {rc}) -->")
            continue
        runs.append(r)
        ok += rc == "0"
        failed += rc != "0"
    if not runs:
        continue
    sim = runs[0]["mode"] == "messages-sim"
    key = "delivered_per_sec" if sim else "accepted_per_sec"
    rates = [r[key] for r in runs]
    m = med(rates)
    lkey = "e2e_latency_ms" if sim else "post_latency_ms"
    row = [name, f"{len(runs)} ({ok})", f"{m:,.0f}", rng(rates), f"{m / 20:,.0f}", f"{m / 250:,.1f}",
           f"{lat(runs, lkey, 'p50'):.2f}", f"{lat(runs, lkey, 'p99'):.2f}", f"{cpu_us(name, 'cpu')} / {cpu_us(name, 'lgcpu')}"]
    if sim:
        cb = lambda s: sum(r["statuses"][s]["arrivals"] for r in runs)
        row += [f"{med([r['accepted_per_sec'] for r in runs]):,.0f}",
                f"{cb('sent')}/{cb('delivered')}/{cb('read')} (total over runs)",
                str(sum(r["duplicates"] for r in runs)),
                str(sum(sum(r["missing"].values()) for r in runs))]
    else:
        row += ["", "", "", ""]
    print("| " + " | ".join(row) + " |")
print()
print("msgs/s: accept-* = accepted (201, durable) per second, first POST to last answer, latency = POST round trip;")
print("sim-delivered-* = messages per second from the first POST to the last `delivered` callback, latency = POST sent")
print("to its `delivered` callback arrived. × 20/s and × 250/s: against the On-Premises minimum and recommended setups.")
print("CPU µs/msg: whole-process CPU time (user + system; coreq's includes its start-up) / accepted messages, for coreq")
print("and for the load generator with its receiver, which share the same cores.")
print("sim-paced-1000 is paced (--rate 1000): its msgs/s is the pace, not a capacity; its latency is the one to read.")
if failed:
    print(f"\n**{failed} run(s) failed or found problems**: see the .rc and .json files in {out}")
sys.exit(1 if failed else 0)
PY
