#!/usr/bin/env python3
"""Deletes what fleet services declared under one prefix on a broker (CI cleanup).

Usage: broker_cleanup.py BROKER_URL PREFIX [STAGE...]
Needs pika (amqp://) or nats-py (nats://): the venv of 50-python-example.sh. Bounded, best
effort: what it misses is removed by scripts/sweep-test-leftovers.sh (prefixes `t-`).

RabbitMQ names mirror shared/protocol/src/names.rs and shared/amqp/src/topology.rs (AMQP cannot
list queues); NATS streams are listed and those named `<PREFIX>_*` deleted.
"""

from __future__ import annotations

import asyncio
import sys

LADDER = ["1s", "5s", "30s", "2m", "10m"]  # fleet_core::broker::default_retry_ladder


def rabbitmq(url: str, p: str, stages: list[str]) -> int:
    import pika
    from pika.exceptions import AMQPError

    params = pika.URLParameters(url)
    params.socket_timeout = params.stack_timeout = params.blocked_connection_timeout = 10
    params.connection_attempts = 1
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    queues = [f"{p}.submit", f"{p}.coordinator.events"]
    for s in stages:
        queues += [f"{p}.jobs.{s}", f"{p}.dlq.{s}"] + [f"{p}.retry.{s}.{d}" for d in LADDER]
    n = 0
    for q in queues:
        try:
            ch.queue_delete(queue=q)
            n += 1
        except AMQPError:
            ch = conn.channel()  # a refused delete closes the channel
    for x in ("jobs", "dlq", "events", "pipelines", "control"):
        try:
            ch.exchange_delete(exchange=f"{p}.{x}")
        except AMQPError:
            ch = conn.channel()
    conn.close()
    return n


async def nats_streams(url: str, p: str) -> int:
    import nats

    async def quiet(_e: Exception) -> None:
        pass

    nc = await asyncio.wait_for(
        nats.connect(servers=[url], connect_timeout=5, allow_reconnect=False,
                     max_reconnect_attempts=1, error_cb=quiet), 15)
    try:
        js = nc.jetstream(timeout=10)
        prefix = p.upper().replace(".", "_").replace("-", "_") + "_"
        names = [s.config.name for s in await js.streams_info()]
        gone = 0
        for name in names:
            if name.startswith(prefix):
                await js.delete_stream(name)
                gone += 1
        return gone
    finally:
        await nc.close()


def main() -> int:
    url, prefix, stages = sys.argv[1], sys.argv[2], sys.argv[3:]
    if url.startswith(("amqp://", "amqps://")):
        n = rabbitmq(url, prefix, stages)
        print(f"cleanup: deleted {n} RabbitMQ queues (and the exchanges) under {prefix}")
    else:
        n = asyncio.run(nats_streams(url, prefix))
        print(f"cleanup: deleted {n} NATS streams under {prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
