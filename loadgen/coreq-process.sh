# Sourced by the bench scripts: start and stop one coreq. The caller sets BIN (where the
# release binaries are), OUT (scratch directory; the data directory is $OUT/data), PORT and
# PASSWORD (the admin's), and installs its own EXIT trap calling stop_coreq.

COREQ_PID=

start_coreq() { # start_coreq LOG COREQ-SERVE-ARGS...   (extra environment: prefix the call)
    local log=$1
    shift
    rm -rf "$OUT/data"
    COREQ_ADMIN_PASSWORD=$PASSWORD COREQ_LOG=warn \
        "$BIN/coreq" serve --data-dir "$OUT/data" --listen "127.0.0.1:$PORT" "$@" >"$log" 2>&1 &
    COREQ_PID=$!
    # Ready once login answers something other than 503 (recovering) or nothing at all.
    for _ in $(seq 100); do
        if ! kill -0 "$COREQ_PID" 2>/dev/null; then
            echo "coreq exited (port $PORT taken by another process?); see $log" >&2
            exit 1
        fi
        code=$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' -X POST "http://127.0.0.1:$PORT/v1/users/login" || true)
        if [[ $code != 503 && $code != 000 ]]; then return 0; fi
        sleep 0.1
    done
    echo "coreq did not become ready; see $log" >&2
    exit 1
}

stop_coreq() {
    if [[ -n $COREQ_PID ]]; then
        kill "$COREQ_PID" 2>/dev/null || true
        wait "$COREQ_PID" 2>/dev/null || true
        COREQ_PID=
    fi
}
