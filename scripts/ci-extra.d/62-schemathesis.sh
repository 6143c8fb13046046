#!/usr/bin/env bash
# API contract fuzzing (issue 13): schemathesis against the coordinator's live OpenAPI
# description (GET /v1/openapi.yaml, i.e. services/coordinator/openapi.yaml).
#  1. a venv under target/tools/schemathesis-venv with pinned schemathesis + hypothesis
#     (hypothesis >= 6.131 breaks schemathesis 3.39: "'many' object has no attribute 'more'")
#  2. a debug coordinator on the memory broker, SQLite under target/tmp, a token, port 32080
#  3. `schemathesis run --checks all` with 25 examples per operation: no 5xx, every status,
#     content type, header and body as documented, every protected operation 401 without the
#     token (check ignored_auth). The coordinator is stopped on exit (trap).
# Environment: FLEET_SCHEMATHESIS_PORT (default 32080), FLEET_SCHEMATHESIS_EXAMPLES (25).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SCHEMATHESIS_VERSION=3.39.16
HYPOTHESIS_VERSION=6.112.5
PORT="${FLEET_SCHEMATHESIS_PORT:-32080}"
EXAMPLES="${FLEET_SCHEMATHESIS_EXAMPLES:-25}"
VENV=target/tools/schemathesis-venv
BIN=target/debug/fleet-coordinator
say() { echo "62-schemathesis: $*"; }
die() { echo "62-schemathesis: ERROR: $*" >&2; exit 1; }

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" ||
   ! "$VENV/bin/python" -c "import hypothesis, sys; sys.exit(hypothesis.__version__ != '$HYPOTHESIS_VERSION')" 2>/dev/null; then
    command -v python3 >/dev/null 2>&1 || die "python3 is missing (apt-get install -y python3 python3-venv)"
    python3 -m venv "$VENV" >/dev/null 2>&1 || {
        say "installing python3-venv"
        apt-get install -y -q python3-venv >/dev/null || die "apt-get install python3-venv failed"
        python3 -m venv "$VENV"
    }
    say "installing schemathesis==$SCHEMATHESIS_VERSION hypothesis==$HYPOTHESIS_VERSION into $VENV"
    timeout 600 "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" "hypothesis==$HYPOTHESIS_VERSION" ||
        die "pip install schemathesis failed (or took over 10 min)"
fi
if [[ ! -x "$BIN" ]]; then
    say "building fleet-coordinator ($BIN is absent)"
    timeout 1800 cargo build --locked -q -p fleet-coordinator --bin fleet-coordinator || die "cargo build failed"
fi

WORK="$PWD/target/tmp/schemathesis-$$"
mkdir -p "$WORK"
PID=
cleanup() {
    if [[ -n "$PID" ]]; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
TOKEN="st-$(date +%s)-$$"
FLEET_BROKER_URL=memory:// FLEET_SQLITE_PATH="$WORK/c.sqlite" FLEET_LISTEN="127.0.0.1:$PORT" \
    FLEET_ADMIN_ADDR=127.0.0.1:0 FLEET_API_TOKEN="$TOKEN" FLEET_LOG_FORMAT=json RUST_LOG=warn \
    "$BIN" >"$WORK/coordinator.log" 2>&1 &
PID=$!
for i in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/v1/openapi.yaml" 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/coordinator.log" >&2; die "the coordinator exited at start"; }
    [[ $i == 100 ]] && die "the coordinator did not answer on 127.0.0.1:$PORT within 10 s"
    sleep 0.1
done
say "fuzzing http://127.0.0.1:$PORT/v1/openapi.yaml ($EXAMPLES examples per operation)"
ROOT=$PWD
cd "$WORK"
timeout 300 "$ROOT/$VENV/bin/schemathesis" run "http://127.0.0.1:$PORT/v1/openapi.yaml" \
    --base-url "http://127.0.0.1:$PORT" -H "Authorization: Bearer $TOKEN" --checks all \
    --hypothesis-max-examples "$EXAMPLES" --hypothesis-deadline none --hypothesis-seed 62 ||
    die "schemathesis found responses that do not match services/coordinator/openapi.yaml (above)"
say "OK"
