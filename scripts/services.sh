#!/usr/bin/env bash
# Ensures the local services fleet's tests use are installed, running and answering:
#   RabbitMQ   127.0.0.1:5672 (guest/guest)
#   NATS       127.0.0.1:4222 with JetStream
#   PostgreSQL 127.0.0.1:5432, trust auth for 127.0.0.1, database `test`
# Idempotent. For a Debian machine; runs as root, or through `sudo -n` otherwise.
# A service already answering on its port is left alone, so on a machine where
# all three run this takes well under a second. Missing packages are installed
# with apt-get (one call for all of them); a service that does not come up within
# FLEET_SERVICE_TIMEOUT seconds (default 90) is an error naming it and its log.
set -euo pipefail

TIMEOUT="${FLEET_SERVICE_TIMEOUT:-90}"
START=$SECONDS

say() { printf 'services: %s\n' "$*"; }

# fail MESSAGE [LOGFILE]: print the error (and the log's tail) and exit 1.
fail() {
    printf 'services: ERROR: %s\n' "$1" >&2
    if [[ -n "${2:-}" ]]; then
        printf 'services: last lines of %s:\n' "$2" >&2
        as_root tail -n 40 "$2" >&2 2>/dev/null || printf '  (cannot read %s)\n' "$2" >&2
    fi
    exit 1
}

if [[ $EUID -eq 0 ]]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo -n "$@"; }
else
    as_root() { "$@"; }
    NO_ROOT=1
fi
need_root() {
    [[ -z "${NO_ROOT:-}" ]] || fail "need root (or passwordless sudo) to $*"
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# nats_jetstream: the INFO line nats-server sends on connect says whether JetStream is on.
nats_jetstream() {
    # shellcheck disable=SC2016 # the inner script expands its own variables
    timeout 5 bash -c '
        exec 3<>/dev/tcp/127.0.0.1/4222 || exit 1
        IFS= read -r -t 4 line <&3 || exit 1
        [[ $line == *"\"jetstream\":true"* ]]' 2>/dev/null
}

# amqp_answers: RabbitMQ answers the AMQP 0-9-1 protocol header with connection.start
# (a method frame, type byte 1). A wedged node accepts TCP but stays silent.
amqp_answers() {
    # shellcheck disable=SC2016 # the inner script expands its own variables
    timeout 6 bash -c '
        exec 3<>/dev/tcp/127.0.0.1/5672 || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        IFS= read -r -n 1 -t 5 -d "" b <&3 || exit 1
        [[ $b == $'"'"'\x01'"'"' ]]' 2>/dev/null
}

psql_local() {
    psql -h 127.0.0.1 -p 5432 -U postgres -w -d postgres -X -q -tA "$@"
}

postgres_ready() {
    [[ "$(psql_local -c "select 1 from pg_database where datname = 'test'" 2>/dev/null)" == 1 ]]
}

# wait_until NAME LOGFILE WHAT COMMAND...: poll COMMAND every 0.5 s for TIMEOUT seconds.
wait_until() {
    local name=$1 log=$2 what=$3
    shift 3
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            fail "$name: $what did not succeed within ${TIMEOUT}s; its log: $log" "$log"
        fi
        sleep 0.5
    done
}

rabbit_log() {
    local f
    # shellcheck disable=SC2010 # log names are rabbit@<host>.log, nothing exotic
    f=$(ls -t /var/log/rabbitmq/rabbit@*.log 2>/dev/null | grep -v _upgrade | head -n1 || true)
    printf '%s' "${f:-/var/log/rabbitmq/}"
}

pg_version() {
    { ls /etc/postgresql 2>/dev/null || true; } | sort -V | tail -n1
}

NATS_LOG=/var/log/nats-server.log

# ---------------------------------------------------------------- fast path
rabbit_up=0 nats_up=0 pg_up=0
port_open 5672 && rabbit_up=1
port_open 4222 && nats_up=1
if port_open 5432 && command -v psql >/dev/null 2>&1 && postgres_ready; then
    pg_up=1
fi
if ((rabbit_up)) && ! amqp_answers; then
    # A wedged node (seen after the disk filled up: mnesia tables went missing and every
    # connection crashed) is restarted once, as an operator would, then started below.
    need_root "restart a wedged RabbitMQ"
    say "RabbitMQ accepts TCP on 127.0.0.1:5672 but does not answer the AMQP handshake within 5s (wedged node?): restarting it"
    as_root timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 || as_root pkill -9 -u rabbitmq beam.smp || true
    for _ in $(seq 30); do
        port_open 5672 || break
        sleep 1
    done
    port_open 5672 && fail "RabbitMQ did not stop within 30s; stop it by hand (rabbitmqctl stop)" "$(rabbit_log)"
    rabbit_up=0
fi
if ((rabbit_up && nats_up && pg_up)); then
    nats_jetstream || fail "NATS answers on 127.0.0.1:4222 but without JetStream; restart it with -js" "$NATS_LOG"
    say "RabbitMQ, NATS (JetStream) and PostgreSQL already running ($((SECONDS - START))s)"
    exit 0
fi

# ---------------------------------------------------------------- install
missing=()
((rabbit_up)) || [[ -x /usr/sbin/rabbitmq-server ]] || missing+=(rabbitmq-server)
((nats_up)) || [[ -x /usr/sbin/nats-server ]] || missing+=(nats-server)
if ((!pg_up)); then
    if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || ! command -v pg_ctlcluster >/dev/null 2>&1; then
        missing+=(postgresql)
    elif ! command -v psql >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
        missing+=(postgresql-client)
    fi
fi
if ((${#missing[@]})); then
    need_root "install ${missing[*]}"
    say "installing ${missing[*]}"
    # Keep the packages' maintainer scripts from starting services: this script
    # starts them itself, the same way on every machine.
    policy_added=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    apt_rc=0
    {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    } || apt_rc=$?
    ((policy_added)) && as_root rm -f /usr/sbin/policy-rc.d
    ((apt_rc == 0)) || fail "apt-get install ${missing[*]} failed (exit $apt_rc)"
fi

# ---------------------------------------------------------------- start
if ((!rabbit_up)); then
    need_root "start RabbitMQ"
    # A node name and listener that do not depend on the host name resolving.
    if ! grep -qs '^[[:space:]]*NODENAME=' /etc/rabbitmq/rabbitmq-env.conf; then
        as_root mkdir -p /etc/rabbitmq
        printf '%s\n' 'NODENAME=rabbit@localhost' 'ERL_EPMD_ADDRESS=127.0.0.1' \
            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"' |
            as_root tee -a /etc/rabbitmq/rabbitmq-env.conf >/dev/null
    fi
    if ! grep -qs '^[[:space:]]*listeners\.tcp' /etc/rabbitmq/rabbitmq.conf; then
        printf '%s\n' 'listeners.tcp.local = 127.0.0.1:5672' |
            as_root tee -a /etc/rabbitmq/rabbitmq.conf >/dev/null
    fi
    say "starting RabbitMQ"
    # Start as the rabbitmq user with a raised soft open-files limit: `su` resets it to 1024,
    # and every quorum queue holds descriptors (a few hundred test queues wedged the node).
    as_root sh -c 'cd /var/lib/rabbitmq && su rabbitmq -s /bin/sh -c \
        "ulimit -n \$(ulimit -Hn) 2>/dev/null; /usr/lib/rabbitmq/bin/rabbitmq-server -detached"' ||
        say "rabbitmq-server -detached exited $? (waiting anyway)"
fi

if ((!nats_up)); then
    need_root "start NATS"
    say "starting NATS with JetStream"
    as_root mkdir -p /var/lib/nats-server
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l "$NATS_LOG"
fi

PG_VER=$(pg_version)
if ((!pg_up)); then
    if [[ -z "$PG_VER" ]]; then
        need_root "create a PostgreSQL cluster"
        # shellcheck disable=SC2012 # version directories: plain numbers
        PG_VER=$(ls /usr/lib/postgresql | sort -V | tail -n1)
        say "creating PostgreSQL $PG_VER cluster main"
        as_root pg_createcluster "$PG_VER" main
    fi
    if ! port_open 5432; then
        need_root "start PostgreSQL"
        say "starting PostgreSQL $PG_VER"
        as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" main start ||
            fail "PostgreSQL: pg_ctlcluster $PG_VER main start failed" \
                "/var/log/postgresql/postgresql-$PG_VER-main.log"
    fi
fi
PG_LOG="/var/log/postgresql/postgresql-${PG_VER:-?}-main.log"

# ---------------------------------------------------------------- wait
if ((!rabbit_up)); then
    wait_until RabbitMQ "$(rabbit_log)" "a TCP connection to 127.0.0.1:5672" port_open 5672
    as_root timeout "$TIMEOUT" rabbitmqctl -q await_startup >/dev/null ||
        fail "RabbitMQ: rabbitmqctl await_startup failed or took over ${TIMEOUT}s" "$(rabbit_log)"
    say "RabbitMQ ready"
fi

if ((!nats_up)); then
    wait_until NATS "$NATS_LOG" "a TCP connection to 127.0.0.1:4222" port_open 4222
    say "NATS ready"
fi
nats_jetstream || fail "NATS answers on 127.0.0.1:4222 but without JetStream; restart it with -js" "$NATS_LOG"

if ((!pg_up)); then
    wait_until PostgreSQL "$PG_LOG" "pg_isready -h 127.0.0.1" pg_isready -q -h 127.0.0.1 -p 5432 -t 2
    # Trust auth for local TCP connections, as the tests connect without a password.
    if ! psql_local -c 'select 1' >/dev/null 2>&1; then
        hba="/etc/postgresql/$PG_VER/main/pg_hba.conf"
        [[ -n "$PG_VER" && -f "$hba" ]] || fail "PostgreSQL: refuses postgres@127.0.0.1 and no pg_hba.conf found to fix" "$PG_LOG"
        need_root "edit $hba"
        say "enabling trust auth for 127.0.0.1 in $hba"
        as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
        as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" main reload
        wait_until PostgreSQL "$PG_LOG" "psql -h 127.0.0.1 -U postgres without a password" \
            psql_local -c 'select 1'
    fi
    if ! postgres_ready; then
        say "creating database test"
        psql_local -c 'create database test' >/dev/null ||
            fail "PostgreSQL: could not create database test" "$PG_LOG"
    fi
    say "PostgreSQL ready"
fi

say "all services ready ($((SECONDS - START))s)"
