#!/usr/bin/env bash
# Python producer example (issue 4): examples/python/submit_pipeline.py publishes a pipeline to
# the submit queue with pika (RabbitMQ) and nats-py (NATS), and the real services complete it.
#  1. a venv under target/tools/pyexample-venv with examples/python/requirements.txt (+ jsonschema
#     for step 2), reused while the requirements are unchanged; python3-venv is installed with
#     apt-get when this Python has no venv/ensurepip
#  2. `--help` runs; the `--dry-run` submission validates against
#     shared/protocol/schema/submission.schema.json
#  3. per broker (RabbitMQ, NATS): a run-unique prefix `t-pyex-…` and SQLite files in a temp dir;
#     target/debug/fleet-coordinator + the analyzer, summarizer and writer are started; the
#     example publishes one pipeline (twice, same id: still one pipeline); `fleetctl status
#     --json` must reach `completed` with every item terminal. Every wait is bounded; every
#     process is stopped and the broker objects deleted on exit (trap)
# Environment: FLEET_TEST_AMQP_URL, FLEET_TEST_NATS_URL (default: the local services),
# FLEET_PYEXAMPLE_TIMEOUT (seconds for a pipeline to complete, default 120).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export SCRIPT_NAME=50-python-example
# shellcheck source=scripts/ci-extra.d/lib/tools.sh
source scripts/ci-extra.d/lib/tools.sh

AMQP_URL="${FLEET_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
NATS_URL="${FLEET_TEST_NATS_URL:-nats://127.0.0.1:4222}"
COMPLETE_TIMEOUT="${FLEET_PYEXAMPLE_TIMEOUT:-120}"
JSONSCHEMA_VERSION=4.23.0
EXAMPLE=examples/python/submit_pipeline.py
REQUIREMENTS=examples/python/requirements.txt
BIN=target/debug
STAGES=(analyze summarize write submit)

tmp=$(mktemp -d)
PIDS=()
CLEANUPS=()
cleanup() {
    local rc=$? pid i
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        # The services drain for at most their --drain-deadline (2s); then they are killed.
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for i in "${CLEANUPS[@]}"; do
        # shellcheck disable=SC2086 # "URL PREFIX STAGES..." on purpose
        timeout 60 "$PY" scripts/ci-extra.d/lib/broker_cleanup.py $i || say "cleanup of $i failed (the next sweep removes it)"
    done
    if ((rc != 0)); then
        for f in "$tmp"/*.log; do
            [[ -f $f ]] || continue
            echo "---- last lines of $(basename "$f") ----" >&2
            tail -n 25 "$f" >&2
        done
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# as_root CMD...: run as root (directly, or with passwordless sudo).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

ensure_example_venv() {
    local venv="$TOOLS_DIR/pyexample-venv" stamp want
    PY="$venv/bin/python"
    want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) jsonschema==$JSONSCHEMA_VERSION"
    stamp="$venv/.fleet-requirements"
    if [[ -x "$PY" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$PY" -c 'import pika, nats, jsonschema' 2>/dev/null; then
        return
    fi
    command -v python3 >/dev/null 2>&1 || die "python3 is missing (apt-get install -y python3 python3-venv)"
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        say "this python3 has no venv/ensurepip: installing python3-venv with apt-get"
        { timeout "$TOOLS_TIMEOUT" as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            timeout "$TOOLS_TIMEOUT" as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv; } >"$tmp/apt.log" 2>&1 ||
            { cat "$tmp/apt.log" >&2; die "could not install python3-venv (needs root or passwordless sudo, and Debian's package index): apt-get install -y python3-venv"; }
    fi
    say "creating $venv from $REQUIREMENTS"
    rm -rf "$venv"
    mkdir -p "$TOOLS_DIR"
    python3 -m venv "$venv" || die "python3 -m venv failed: on Debian install python3-venv"
    if ! timeout "$TOOLS_TIMEOUT" "$venv/bin/pip" install --quiet --disable-pip-version-check \
        --timeout 30 -r "$REQUIREMENTS" "jsonschema==$JSONSCHEMA_VERSION"; then
        rm -rf "$venv"
        die "pip install -r $REQUIREMENTS failed or took over ${TOOLS_TIMEOUT}s: check access to PyPI (or a mirror via PIP_INDEX_URL)"
    fi
    printf '%s' "$want" >"$stamp"
}

# free_port: an unused loopback TCP port.
free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# http_ok URL: true when URL answers 2xx within 3 s.
http_ok() {
    "$PY" - "$1" <<'PYEOF' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        sys.exit(0 if 200 <= r.status < 300 else 1)
except Exception:
    sys.exit(1)
PYEOF
}

# start NAME BINARY ARGS...: runs a service in the background, no FLEET_* variables inherited.
start() {
    local name=$1 bin=$2
    shift 2
    (
        while read -r v; do unset "$v"; done < <(compgen -e | grep '^FLEET_' || true)
        exec "$bin" "$@"
    ) >"$tmp/$name.log" 2>&1 &
    PIDS+=($!)
}

# wait_ready NAME ADMIN_PORT PID: /readyz of a service, bounded.
wait_ready() {
    local name=$1 port=$2 pid=$3 i
    for i in $(seq 1 120); do
        http_ok "http://127.0.0.1:$port/readyz" && return 0
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up (log below)"
        sleep 0.5
    done
    die "$name was not ready within 60s"
}

# status_field JSON_FILE EXPR: a field of fleetctl's JSON (python expression over `r`).
status_field() {
    "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# run_broker NAME URL: the whole scenario on one broker.
run_broker() {
    local kind=$1 url=$2
    local prefix="t-pyex-${kind}-$(printf '%04x%04x' $RANDOM $RANDOM)"
    local api admin_c admin_a admin_s admin_w common pid_c pid_a pid_s pid_w
    local pid_id="py-${kind}-$(printf '%04x%04x' $RANDOM $RANDOM)"
    say "[$kind] prefix $prefix, pipeline $pid_id"
    CLEANUPS+=("$url $prefix ${STAGES[*]}")
    api=$(free_port)
    admin_c=$(free_port) admin_a=$(free_port) admin_s=$(free_port) admin_w=$(free_port)
    common=(--broker-url="$url" --prefix="$prefix" --heartbeat-interval=1s
        --drain-deadline=2s --broker-heartbeat=5s --confirm-timeout=10s --log-format=json)
    start "$kind-coordinator" "$BIN/fleet-coordinator" "${common[@]}" --admin-addr="127.0.0.1:$admin_c" \
        --listen="127.0.0.1:$api" --sqlite-path="$tmp/$kind-coordinator.sqlite" --tick=200ms
    pid_c=${PIDS[-1]}
    wait_ready "$kind coordinator" "$admin_c" "$pid_c"
    start "$kind-analyzer" "$BIN/fleet-analyzer" "${common[@]}" --admin-addr="127.0.0.1:$admin_a"
    pid_a=${PIDS[-1]}
    start "$kind-summarizer" "$BIN/fleet-summarizer" "${common[@]}" --admin-addr="127.0.0.1:$admin_s"
    pid_s=${PIDS[-1]}
    start "$kind-writer" "$BIN/fleet-writer" "${common[@]}" --admin-addr="127.0.0.1:$admin_w" \
        --sqlite-path="$tmp/$kind-writer.sqlite"
    pid_w=${PIDS[-1]}
    wait_ready "$kind analyzer" "$admin_a" "$pid_a"
    wait_ready "$kind summarizer" "$admin_s" "$pid_s"
    wait_ready "$kind writer" "$admin_w" "$pid_w"

    # The example, as a user runs it: the pipeline id comes back on stdout.
    local got
    got=$(timeout 60 "$PY" "$EXAMPLE" --broker-url "$url" --prefix "$prefix" \
        --pipeline-id "$pid_id" 2>"$tmp/$kind-example.err") ||
        { cat "$tmp/$kind-example.err" >&2; die "[$kind] the example failed"; }
    [[ $got == "$pid_id" ]] || die "[$kind] the example printed $got, not the pipeline id $pid_id"
    say "[$kind] $(cat "$tmp/$kind-example.err")"

    local fleetctl=("$BIN/fleetctl" --url "http://127.0.0.1:$api" --connect-timeout 3s --request-timeout 10s)
    local deadline=$((SECONDS + COMPLETE_TIMEOUT)) state=""
    while ((SECONDS < deadline)); do
        if timeout 15 "${fleetctl[@]}" status "$pid_id" --json >"$tmp/$kind-status.json" 2>"$tmp/$kind-status.err"; then
            state=$(status_field "$tmp/$kind-status.json" 'r["state"]')
            [[ $state == running ]] || break
        fi
        for p in "$pid_c" "$pid_a" "$pid_s" "$pid_w"; do
            kill -0 "$p" 2>/dev/null || die "[$kind] a service exited while the pipeline ran"
        done
        sleep 0.5
    done
    [[ $state == completed ]] ||
        { cat "$tmp/$kind-status.json" "$tmp/$kind-status.err" >&2 2>/dev/null || true; die "[$kind] pipeline $pid_id is '${state:-unknown}', not completed, after ${COMPLETE_TIMEOUT}s"; }
    local terminal total
    terminal=$(status_field "$tmp/$kind-status.json" 'r["items_terminal"]')
    total=$(status_field "$tmp/$kind-status.json" 'len(r["items"])')
    [[ $terminal == 2 && $total == 2 ]] || die "[$kind] expected 2 items, all terminal; got $terminal of $total"
    say "[$kind] pipeline $pid_id completed through coordinator + analyzer + summarizer + writer"

    # The same submission again: still one pipeline (NATS drops the duplicate publish; on
    # RabbitMQ the coordinator finds the existing pipeline).
    timeout 60 "$PY" "$EXAMPLE" --broker-url "$url" --prefix "$prefix" --pipeline-id "$pid_id" \
        >/dev/null 2>"$tmp/$kind-example2.err" ||
        { cat "$tmp/$kind-example2.err" >&2; die "[$kind] the second publish failed"; }
    if [[ $kind == nats ]]; then
        grep -q duplicate "$tmp/$kind-example2.err" ||
            die "[$kind] the second publish was not de-duplicated: $(cat "$tmp/$kind-example2.err")"
    else
        deadline=$((SECONDS + 30))
        until "$PY" - "http://127.0.0.1:$admin_c/metrics" <<'PYEOF'; do
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=3).read().decode()
m = re.search(r'^fleet_coordinator_queue_submissions_total\{[^}]*result="existing"[^}]*\} (\S+)', text, re.M)
sys.exit(0 if m and float(m.group(1)) >= 1 else 1)
PYEOF
            ((SECONDS < deadline)) || die "[$kind] the coordinator never consumed the repeated submission"
            sleep 0.5
        done
    fi
    timeout 15 "${fleetctl[@]}" list --json >"$tmp/$kind-list.json" || die "[$kind] fleetctl list failed"
    local n
    n=$(status_field "$tmp/$kind-list.json" 'len(r["pipelines"]) if isinstance(r, dict) else len(r)')
    [[ $n == 1 ]] || die "[$kind] $n pipelines after publishing the same submission twice"
    say "[$kind] publishing it again kept one pipeline"
}

say "1/3 venv with the example's pinned requirements"
ensure_example_venv
"$PY" -c 'import importlib.metadata as m; print("  pika", m.version("pika"), "nats-py", m.version("nats-py"))'

say "2/3 --help, and the submission against the checked-in schema"
"$PY" "$EXAMPLE" --help >/dev/null
"$PY" "$EXAMPLE" --dry-run --text one --text two --route analyze,summarize,write --deadline 60 >"$tmp/sub.json"
"$PY" - "$tmp/sub.json" shared/protocol/schema/submission.schema.json <<'PYEOF'
import json, sys
import jsonschema
sub, schema = (json.load(open(p)) for p in sys.argv[1:3])
jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(sub)
print("  the example's submission matches submission.schema.json")
PYEOF

say "3/3 the example against the real brokers, with the real services"
for b in coordinator analyzer summarizer writer; do
    [[ -x $BIN/fleet-$b ]] || missing=1
done
if [[ -n ${missing:-} || ! -x $BIN/fleetctl ]]; then
    say "building the debug binaries"
    timeout 1800 cargo build --locked -q -p fleet-coordinator -p fleet-analyzer -p fleet-summarizer \
        -p fleet-writer -p fleetctl || die "cargo build of the services failed"
fi
run_broker rabbitmq "$AMQP_URL"
run_broker nats "$NATS_URL"
say "OK"
