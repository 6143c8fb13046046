#!/usr/bin/env bash
# Metrics catalog checks (issue 5):
#  1. docs/metrics.md vs the Rust code: every metric the code emits (metrics::counter!/gauge!/
#     histogram! calls, metric-name consts) is documented with the same type and label names,
#     nothing documented is absent from the code, and the closed value sets marked (checked)
#     equal the code's enums/consts (scripts/ci-extra.d/lib/check_metrics_docs.py, stdlib).
#  2. deploy/grafana/fleet-dashboard.json parses as JSON, its panels are well-formed, it only uses
#     metrics documented in docs/metrics.md, covers the views issue 5 lists, and every query is
#     valid PromQL (`promtool check rules` on the queries as recording rules).
#  3. A real Prometheus parser accepts each service's exposition: starts fleet-analyzer,
#     fleet-summarizer, fleet-writer and fleet-coordinator on FLEET_BROKER_URL=memory:// with
#     FLEET_ADMIN_ADDR on a free 127.0.0.1 port (SQLite files in a temp dir), checks /healthz
#     and /readyz answer 200, pipes /metrics into `promtool check metrics`, checks every series
#     it exports is documented for that service, then stops each with SIGTERM and requires exit 0.
# Binaries: target/debug/<bin>, built with `cargo build --locked -p <pkg>` when absent
# (FLEET_METRICS_REBUILD=1 rebuilds anyway). promtool: see lib/tools.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export SCRIPT_NAME=10-metrics
# shellcheck source=scripts/ci-extra.d/lib/tools.sh
source scripts/ci-extra.d/lib/tools.sh

START_TIMEOUT="${FLEET_METRICS_START_TIMEOUT:-30}"
STOP_TIMEOUT="${FLEET_METRICS_STOP_TIMEOUT:-40}"   # > FLEET_DRAIN_DEADLINE (25s)
SERVICES=(fleet-analyzer fleet-summarizer fleet-writer fleet-coordinator)

say "1/3 docs/metrics.md vs the Rust sources"
python3 scripts/ci-extra.d/lib/check_metrics_docs.py .

ensure_promtool
say "2/3 deploy/grafana/fleet-dashboard.json: JSON, documented metrics only, PromQL parses"
dash_rules=$(mktemp)
python3 scripts/ci-extra.d/lib/check_dashboard.py . --rules-out "$dash_rules"
"$PROMTOOL" check rules "$dash_rules" >/dev/null || { "$PROMTOOL" check rules "$dash_rules"; rm -f "$dash_rules"; die "a dashboard query is not valid PromQL (above)"; }
rm -f "$dash_rules"
say "  every dashboard query parses (promtool check rules)"

say "3/3 live /metrics of every service through promtool check metrics"
for svc in "${SERVICES[@]}"; do
    if [[ ! -x "target/debug/$svc" || "${FLEET_METRICS_REBUILD:-0}" == 1 ]]; then
        say "building $svc (target/debug/$svc is absent)"
        timeout 1800 cargo build --locked -q -p "$svc" --bin "$svc" ||
            die "cargo build -p $svc failed (or took over 30 min)"
    fi
done

WORK=$(mktemp -d)
declare -A PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 0.5
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

declare -A ADMIN=()
for svc in "${SERVICES[@]}"; do
    port=$(free_port)
    ADMIN[$svc]="127.0.0.1:$port"
    env=(FLEET_BROKER_URL=memory:// "FLEET_ADMIN_ADDR=127.0.0.1:$port" FLEET_LOG_FORMAT=json)
    case $svc in
        fleet-analyzer) env+=("FLEET_ANALYZERS_CONFIG=$PWD/deploy/analyzers.sample.toml") ;;
        # a configured (unreachable, never called while idle) provider exports its breaker gauge
        fleet-summarizer) env+=(FLEET_OPENAI_BASE_URL=http://127.0.0.1:9/v1 FLEET_OPENAI_NAME=ci) ;;
        fleet-writer) env+=("FLEET_SQLITE_PATH=$WORK/writer.sqlite") ;;
        fleet-coordinator) env+=("FLEET_SQLITE_PATH=$WORK/coordinator.sqlite" "FLEET_LISTEN=127.0.0.1:$(free_port)") ;;
    esac
    env -u FLEET_DATABASE_URL "${env[@]}" "target/debug/$svc" >"$WORK/$svc.log" 2>&1 &
    PIDS[$svc]=$!
done

fail_svc() {
    printf '%s: ERROR: %s\n' "$SCRIPT_NAME" "$2" >&2
    printf '%s: last lines of the %s log:\n' "$SCRIPT_NAME" "$1" >&2
    tail -n 30 "$WORK/$1.log" >&2 || true
    exit 1
}

for svc in "${SERVICES[@]}"; do
    url="http://${ADMIN[$svc]}"
    deadline=$((SECONDS + START_TIMEOUT))
    until curl -fsS -m 2 -o /dev/null "$url/readyz" 2>/dev/null; do
        kill -0 "${PIDS[$svc]}" 2>/dev/null || fail_svc "$svc" "$svc exited during start-up"
        ((SECONDS < deadline)) || fail_svc "$svc" "$svc: $url/readyz did not answer 200 within ${START_TIMEOUT}s"
        sleep 0.3
    done
    curl -fsS -m 5 -o /dev/null "$url/healthz" || fail_svc "$svc" "$svc: $url/healthz is not 200"
done
# Let the workers run a moment (heartbeats, event batches, sweeper ticks).
sleep 3

for svc in "${SERVICES[@]}"; do
    out="$WORK/$svc.metrics"
    curl -fsS -m 5 "http://${ADMIN[$svc]}/metrics" >"$out" || fail_svc "$svc" "$svc: GET /metrics failed"
    [[ -s "$out" ]] || fail_svc "$svc" "$svc: /metrics is empty"
    if ! "$PROMTOOL" check metrics <"$out" >"$WORK/$svc.promtool" 2>&1; then
        cat "$WORK/$svc.promtool" >&2
        printf '%s: the exposition was:\n' "$SCRIPT_NAME" >&2
        cat "$out" >&2
        die "promtool check metrics rejects $svc's /metrics (above)"
    fi
    python3 scripts/ci-extra.d/lib/check_metrics_docs.py . --scrape "$svc" "$out"
    say "$svc: promtool check metrics OK ($(grep -c '^[a-z]' "$out" || true) samples)"
done

for svc in "${SERVICES[@]}"; do
    pid=${PIDS[$svc]}
    kill -TERM "$pid"
    rc=0
    deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || fail_svc "$svc" "$svc did not exit within ${STOP_TIMEOUT}s of SIGTERM"
        sleep 0.2
    done
    wait "$pid" || rc=$?
    unset "PIDS[$svc]"
    ((rc == 0)) || fail_svc "$svc" "$svc exited $rc after SIGTERM (expected 0)"
    say "$svc: SIGTERM -> exit 0"
done
say "OK"
