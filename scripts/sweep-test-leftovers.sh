#!/usr/bin/env bash
# Removes queues, exchanges and streams that earlier test runs left behind (a test killed
# mid-run cannot clean up): RabbitMQ names starting with `t-` or `bench-`, NATS streams
# starting with `T_`, `T` + hex (adapter tests) or `BENCH_`. Run by scripts/test.sh before
# the suite, when no other test run uses the brokers. Bounded; never fails the build.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A benchmark may be running beside the tests: then its `bench-`/`BENCH_` resources are live.
rabbit_stale='^(t-|bench-)'
nats_stale='^(T_|T[0-9A-F]{8}_|BENCH_)'
if pgrep -x fleet-bench >/dev/null 2>&1; then
    echo "sweep: fleet-bench is running; leaving bench resources alone"
    rabbit_stale='^t-'
    nats_stale='^(T_|T[0-9A-F]{8}_)'
fi
export nats_stale

if command -v rabbitmqctl >/dev/null 2>&1; then
    queues=$(timeout 30 rabbitmqctl -q list_queues name 2>/dev/null | grep -E "$rabbit_stale" || true)
    n=$(printf '%s\n' "$queues" | grep -c . || true)
    if [ "$n" -gt 0 ]; then
        echo "sweep: deleting $n stale RabbitMQ test queues"
        # One node-side call for all of them (one CLI call per queue costs ~1 s). Hundreds of
        # leftover quorum queues exhaust a node started with 1024 file descriptors: it then
        # accepts TCP but never answers the AMQP handshake (seen 2026-12-02).
        timeout 120 rabbitmqctl -q eval "length([rabbit_amqqueue:delete(Q, false, false, <<\"sweep\">>) || Q <- rabbit_amqqueue:list(), re:run(element(4, amqqueue:get_name(Q)), \"$rabbit_stale\") =/= nomatch])." </dev/null >/dev/null 2>&1 ||
            echo "sweep: could not delete the stale queues (rabbitmqctl eval failed)"
    fi
    exchanges=$(timeout 30 rabbitmqctl -q list_exchanges name 2>/dev/null | grep -E "$rabbit_stale" || true)
    n=$(printf '%s\n' "$exchanges" | grep -c . || true)
    if [ "$n" -gt 0 ]; then
        echo "sweep: deleting $n stale RabbitMQ test exchanges"
        printf '%s\n' "$exchanges" | head -n 300 | while read -r x; do
            timeout 15 rabbitmqctl -q eval "rabbit_exchange:delete({resource, <<\"/\">>, exchange, <<\"$x\">>}, false, <<\"sweep\">>)." </dev/null >/dev/null 2>&1 || true
        done
    fi
fi

# NATS: talk the client protocol directly (no CLI needed) to list and delete streams.
timeout 60 python3 - <<'PY' || echo "sweep: NATS sweep skipped (server not answering)"
import json, os, re, socket, uuid

def connect():
    s = socket.create_connection(("127.0.0.1", 4222), timeout=5)
    f = s.makefile("rb")
    f.readline()  # INFO
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":false}\r\nPING\r\n')
    while not f.readline().startswith(b"PONG"):
        pass
    return s, f

def request(s, f, subject, payload=b""):
    inbox = "_INBOX." + uuid.uuid4().hex
    s.sendall(f"SUB {inbox} 1\r\nPUB {subject} {inbox} {len(payload)}\r\n".encode() + payload + b"\r\n")
    while True:
        line = f.readline()
        if line.startswith(b"MSG"):
            size = int(line.split()[-1])
            body = f.read(size + 2)[:-2]
            s.sendall(b"UNSUB 1\r\n")
            return json.loads(body)
        if line.startswith(b"PING"):
            s.sendall(b"PONG\r\n")

s, f = connect()
names, offset = [], 0
while True:
    r = request(s, f, "$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode())
    page = r.get("streams") or []
    names += page
    offset += len(page)
    if not page or offset >= r.get("total", 0):
        break
stale = [n for n in names if re.match(os.environ["nats_stale"], n)]
if stale:
    print(f"sweep: deleting {len(stale)} stale NATS test streams")
for n in stale[:500]:
    request(s, f, f"$JS.API.STREAM.DELETE.{n}")
PY
exit 0
