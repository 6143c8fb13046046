#!/usr/bin/env bash
# A three-node RabbitMQ cluster (or a single node, FLEET_RABBIT_CLUSTER_NODES=1) on loopback,
# beside (and never touching) the machine's own node: nodes fleet-c1..3@localhost, AMQP ports BASE..BASE+2, distribution ports BASE+10..12,
# data, logs, config and Erlang cookie under DIR. Runs Debian's rabbitmq-server as the
# calling user; the machine's epmd (started with its RabbitMQ) is shared.
#
#   scripts/rabbitmq-cluster.sh start          start three nodes, join 2 and 3 to 1 (join_cluster)
#   scripts/rabbitmq-cluster.sh stop           stop every node (bounded), delete DIR
#   scripts/rabbitmq-cluster.sh status         cluster_status from node 1
#   scripts/rabbitmq-cluster.sh urls           the comma-separated AMQP URL list for FLEET_BROKER_URL
#   scripts/rabbitmq-cluster.sh kill N         SIGKILL node N's Erlang VM (a lost machine)
#   scripts/rabbitmq-cluster.sh start-node N   start node N again (it rejoins from its data)
#   scripts/rabbitmq-cluster.sh leader QUEUE   the number (1-3) of the node leading quorum queue QUEUE
#   scripts/rabbitmq-cluster.sh stop-app N     `rabbitmqctl stop_app` on node N (the Erlang VM stays up)
#   scripts/rabbitmq-cluster.sh start-app N    `rabbitmqctl start_app` on node N, waits until it runs
#
# Environment: FLEET_RABBIT_CLUSTER_DIR (default target/tmp/rabbitmq-cluster),
# FLEET_RABBIT_CLUSTER_PORT (default 36672), FLEET_RABBIT_CLUSTER_NODES (default 3; 1 starts a
# single node and joins nothing), FLEET_RABBIT_CLUSTER_NAME (node name prefix, default fleet-c:
# nodes <prefix>1@localhost…). The fault campaign's private node (tests/src/chaos/private.rs)
# is FLEET_RABBIT_CLUSTER_NODES=1 on its own port, name and DIR. Every wait is bounded
# (START_TIMEOUT, 120 s).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR="${FLEET_RABBIT_CLUSTER_DIR:-$PWD/target/tmp/rabbitmq-cluster}"
BASE="${FLEET_RABBIT_CLUSTER_PORT:-36672}"
NODES="${FLEET_RABBIT_CLUSTER_NODES:-3}"
NAME="${FLEET_RABBIT_CLUSTER_NAME:-fleet-c}"
START_TIMEOUT=120
RABBIT_BIN=/usr/lib/rabbitmq/bin

if [[ ! "$NODES" =~ ^[1-9]$ ]]; then
    echo "FLEET_RABBIT_CLUSTER_NODES must be a number of nodes from 1 to 9, not '$NODES'" >&2
    exit 2
fi

node_name() { echo "$NAME$1@localhost"; }
port() { echo $((BASE + $1 - 1)); }

# ctl N ARGS...: rabbitmqctl against node N with the cluster's own cookie.
ctl() {
    local n=$1
    shift
    HOME="$DIR/home" timeout "$START_TIMEOUT" "$RABBIT_BIN/rabbitmqctl" -q -n "$(node_name "$n")" "$@"
}

setup() {
    if [[ ! -x "$RABBIT_BIN/rabbitmq-server" ]]; then
        echo "rabbitmq-server not found under $RABBIT_BIN: run scripts/services.sh first" >&2
        exit 1
    fi
    mkdir -p "$DIR/home"
    if [[ ! -f "$DIR/home/.erlang.cookie" ]]; then
        # Its own cookie: the cluster never talks to the machine's node.
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/home/.erlang.cookie"
        chmod 400 "$DIR/home/.erlang.cookie"
    fi
    echo '[].' >"$DIR/enabled_plugins"
    # Empty env file: the machine's /etc/rabbitmq/rabbitmq-env.conf names its own node.
    : >"$DIR/rabbitmq-env.conf"
    for ((n = 1; n <= NODES; n++)); do
        mkdir -p "$DIR/n$n"
        cat >"$DIR/n$n/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(port "$n")
disk_free_limit.absolute = 50MB
cluster_partition_handling = pause_minority
log.file.level = warning
EOF
    done
}

# start_node N: starts node N in the background and waits until it runs.
start_node() {
    local n=$1 d="$DIR/n$1"
    if ctl "$n" status >/dev/null 2>&1; then
        return 0
    fi
    (
        ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
        export HOME="$DIR/home" \
            RABBITMQ_NODENAME="$(node_name "$n")" \
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
            RABBITMQ_NODE_PORT="$(port "$n")" \
            RABBITMQ_DIST_PORT=$(($(port "$n") + 10)) \
            RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
            RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
            RABBITMQ_MNESIA_BASE="$d/mnesia" \
            RABBITMQ_LOG_BASE="$d/log" \
            RABBITMQ_PID_FILE="$d/pid" \
            ERL_EPMD_ADDRESS=127.0.0.1 \
            ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
        setsid "$RABBIT_BIN/rabbitmq-server" >"$d/stdout.log" 2>&1 </dev/null &
    )
    local deadline=$((SECONDS + START_TIMEOUT))
    until [[ -s "$d/pid" ]] && ctl "$n" await_startup >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "node $(node_name "$n") did not start within ${START_TIMEOUT}s; its output:" >&2
            tail -30 "$d/stdout.log" >&2 || true
            exit 1
        fi
        sleep 1
    done
}

join() {
    local n=$1
    if ctl 1 cluster_status --formatter json 2>/dev/null | grep -q "\"$(node_name "$n")\""; then
        return 0
    fi
    ctl "$n" stop_app
    ctl "$n" join_cluster "$(node_name 1)"
    ctl "$n" start_app
}

cmd_start() {
    local t0=$SECONDS n pids=()
    setup
    # The nodes boot in parallel; node 1 must run before the others join it.
    for ((n = 1; n <= NODES; n++)); do
        start_node "$n" &
        pids+=($!)
    done
    for n in "${pids[@]}"; do wait "$n"; done
    pids=()
    for ((n = 2; n <= NODES; n++)); do
        join "$n" &
        pids+=($!)
    done
    for n in "${pids[@]}"; do wait "$n"; done
    local running
    running=$(ctl 1 eval 'length(rabbit_nodes:all_running()).')
    if [[ "$running" != "$NODES" ]]; then
        echo "cluster has $running running nodes, expected $NODES" >&2
        exit 1
    fi
    echo "rabbitmq: $NODES node(s) $(node_name 1)… on ports $(port 1)-$(port "$NODES") in $((SECONDS - t0))s"
}

cmd_stop() {
    for ((n = 1; n <= NODES; n++)); do
        if [[ -s "$DIR/n$n/pid" ]]; then
            # Bounded: a node that does not stop within 30 s is killed.
            HOME="$DIR/home" timeout 30 "$RABBIT_BIN/rabbitmqctl" -q -n "$(node_name "$n")" stop \
                >/dev/null 2>&1 || cmd_kill "$n"
        fi
    done
    rm -rf "$DIR"
}

cmd_kill() {
    local pid
    pid=$(cat "$DIR/n$1/pid" 2>/dev/null || true)
    if [[ -n "$pid" ]]; then
        kill -9 "$pid" 2>/dev/null || true
    fi
}

cmd_urls() {
    local out="" n
    for ((n = 1; n <= NODES; n++)); do
        out+="${out:+,}amqp://guest:guest@127.0.0.1:$(port "$n")/%2f"
    done
    echo "$out"
}

cmd_leader() {
    local queue=$1 leader n
    for ((n = 1; n <= NODES; n++)); do
        leader=$(ctl "$n" list_queues name leader --no-table-headers 2>/dev/null |
            awk -v q="$queue" '$1 == q { print $2 }') || continue
        [[ -n "$leader" ]] && break
    done
    case "$leader" in
    "$(node_name 1)") echo 1 ;;
    "$(node_name 2)") echo 2 ;;
    "$(node_name 3)") echo 3 ;;
    *)
        echo "no leader known for queue $queue" >&2
        exit 1
        ;;
    esac
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) ctl 1 cluster_status ;;
urls) cmd_urls ;;
kill) cmd_kill "${2:?node number}" ;;
start-node)
    setup
    start_node "${2:?node number}"
    ;;
leader) cmd_leader "${2:?queue name}" ;;
stop-app) ctl "${2:?node number}" stop_app ;;
start-app)
    ctl "${2:?node number}" start_app
    ctl "$2" await_startup
    ;;
*)
    sed -n '2,22p' "$0"
    exit 2
    ;;
esac
