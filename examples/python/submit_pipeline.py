#!/usr/bin/env python3
"""Publish one fleet pipeline submission to the submit queue, from Python.

The broker is chosen by URL: ``amqp://`` / ``amqps://`` publishes to RabbitMQ with pika,
``nats://`` / ``tls://`` to NATS JetStream with nats-py. The body is a submission as described
by shared/protocol/schema/submission.schema.json (``{"v": 1, "pipeline_id": ..., "items": [...]}``);
the coordinator consumes it exactly as it handles ``POST /v1/pipelines``. The pipeline id is
printed on stdout (everything else goes to stderr), so a script can follow it with
``fleetctl watch "$(python3 submit_pipeline.py ...)"``.

Publishing the same pipeline id twice is safe: the coordinator keeps one pipeline (and NATS
de-duplicates the publish itself through ``Nats-Msg-Id``).

Exit codes: 0 published (or printed with --dry-run), 1 the broker refused or did not confirm,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

SAMPLE_ITEMS = [
    ("queues.txt", "Job pipelines built on queues keep failing the same ways: a hung call holds "
     "a worker slot forever, a dead consumer skips thousands of items, a pipeline stays running "
     "after its tasks failed."),
    ("fleet.txt", "fleet bounds every wait, retries with backoff, dead-letters what cannot "
     "succeed and finalizes every pipeline with a reason per item."),
]


class PublishError(Exception):
    """The broker refused the submission or did not confirm it in time."""


def build_submission(args: argparse.Namespace) -> dict:
    """The submission body (wire format v1)."""
    items = []
    for path in args.files:
        p = Path(path)
        items.append({"item_id": p.name, "text": p.read_text(encoding="utf-8"),
                      "metadata": {"source": str(p)}})
    for i, text in enumerate(args.text or [], 1):
        items.append({"item_id": f"text-{i}", "text": text, "metadata": {}})
    if not items:
        items = [{"item_id": i, "text": t, "metadata": {}} for i, t in SAMPLE_ITEMS]
    ids = [it["item_id"] for it in items]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"item ids must be unique within a pipeline: {ids}")
    sub: dict = {"v": 1, "pipeline_id": args.pipeline_id, "items": items}
    if args.route:
        sub["route"] = [{"stage": s.strip(), "required": True}
                        for s in args.route.split(",") if s.strip()]
    if args.deadline is not None:
        at = datetime.now(timezone.utc) + timedelta(seconds=args.deadline)
        sub["deadline_at"] = at.isoformat().replace("+00:00", "Z")
    return sub


def publish_rabbitmq(url: str, subject: str, body: bytes, pipeline_id: str, timeout: float) -> str:
    """Publishes to the default exchange with routing key ``subject`` (the submit queue), in
    confirm mode with ``mandatory``, so an unroutable or refused message is an error."""
    import pika  # imported here: a NATS user needs no pika
    from pika.exceptions import AMQPError, NackError, UnroutableError

    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout
    params.connection_attempts = 1
    params.client_properties = {"connection_name": "fleet-python-example"}
    try:
        conn = pika.BlockingConnection(params)
    except AMQPError as e:
        raise PublishError(f"cannot connect to RabbitMQ at {redact(url)}: {e!r}") from e
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=pipeline_id,
            headers={"idempotency-key": pipeline_id},
        )
        ch.basic_publish(exchange="", routing_key=subject, body=body, properties=props,
                         mandatory=True)
        return f"RabbitMQ confirmed the publish to queue {subject}"
    except UnroutableError as e:
        raise PublishError(f"no queue {subject} on RabbitMQ: start the coordinator first "
                           f"(it declares the submit queue) or check --prefix") from e
    except NackError as e:
        raise PublishError(f"RabbitMQ refused the message (nack): {e!r}") from e
    except AMQPError as e:
        raise PublishError(f"publishing to RabbitMQ failed: {e!r}") from e
    finally:
        try:
            conn.close()
        except AMQPError:
            pass


async def publish_nats(url: str, subject: str, body: bytes, pipeline_id: str, timeout: float) -> str:
    """JetStream publish to ``subject`` with ``Nats-Msg-Id``, waiting for the stream's ack."""
    import nats  # imported here: a RabbitMQ user needs no nats-py
    from nats.errors import Error as NatsError, NoRespondersError, TimeoutError as NatsTimeout
    from nats.js.errors import NoStreamResponseError

    async def quiet(_e: Exception) -> None:
        pass  # errors are raised where they happen; no callback noise on stderr

    servers = [u.strip() for u in url.split(",") if u.strip()]
    try:
        # max_reconnect_attempts=0 makes nats-py retry an unreachable server forever: 1 try
        # per server, and the whole connect bounded as well.
        nc = await asyncio.wait_for(
            nats.connect(servers=servers, connect_timeout=timeout, allow_reconnect=False,
                         max_reconnect_attempts=1, reconnect_time_wait=0.2,
                         name="fleet-python-example", error_cb=quiet),
            timeout * (len(servers) + 1))
    except (NatsError, OSError, asyncio.TimeoutError) as e:
        raise PublishError(f"cannot connect to NATS at {redact(url)}: {e!r}") from e
    try:
        js = nc.jetstream(timeout=timeout)
        ack = await js.publish(subject, body, timeout=timeout,
                               headers={"Nats-Msg-Id": pipeline_id})
        dup = " (a duplicate within the de-duplication window: stored once)" if ack.duplicate else ""
        return f"JetStream stored it in {ack.stream} as sequence {ack.seq}{dup}"
    except (NoRespondersError, NoStreamResponseError) as e:
        raise PublishError(f"no stream takes subject {subject}: start the coordinator first "
                           f"(it declares the streams) or check --prefix") from e
    except (NatsTimeout, asyncio.TimeoutError) as e:
        raise PublishError(f"NATS did not acknowledge the publish within {timeout}s") from e
    except NatsError as e:
        raise PublishError(f"publishing to NATS failed: {e!r}") from e
    finally:
        await nc.close()


def redact(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url.split(",")[0])
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Publish one fleet pipeline submission to the submit queue "
                    "(RabbitMQ with pika or NATS JetStream with nats-py, chosen by the URL). "
                    "Prints the pipeline id on stdout.",
        epilog="Examples:\n"
               "  %(prog)s --broker-url amqp://guest:guest@127.0.0.1:5672/%%2f notes/*.txt\n"
               "  %(prog)s --broker-url nats://127.0.0.1:4222 --text 'hello' --text 'world'\n"
               "  fleetctl watch \"$(%(prog)s --broker-url nats://127.0.0.1:4222)\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("files", nargs="*", metavar="FILE",
                    help="UTF-8 text files, one item each (item id = file name); "
                         "without FILE or --text, two built-in sample items")
    ap.add_argument("--broker-url", default=os.environ.get("FLEET_BROKER_URL", "nats://127.0.0.1:4222"),
                    help="amqp://USER:PASS@HOST:PORT/VHOST or nats://HOST:PORT (comma-separated "
                         "NATS servers allowed); env FLEET_BROKER_URL; default %(default)s")
    ap.add_argument("--prefix", default=os.environ.get("FLEET_PREFIX", "fleet"),
                    help="fleet name prefix (the coordinator's FLEET_PREFIX); env FLEET_PREFIX; "
                         "default %(default)s")
    ap.add_argument("--pipeline-id", default=None,
                    help="pipeline id (idempotency key); default py-<random>")
    ap.add_argument("--text", action="append", metavar="TEXT",
                    help="an item given inline (repeatable)")
    ap.add_argument("--route", default=None, metavar="STAGES",
                    help="comma-separated stages every item goes through, e.g. "
                         "analyze,summarize,write; default: the coordinator's FLEET_ROUTE")
    ap.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                    help="pipeline deadline, this many seconds from now")
    ap.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                    help="bound on connecting and on the broker's confirmation (default %(default)s)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the submission JSON on stdout and publish nothing")
    args = ap.parse_args(argv)
    if not args.pipeline_id:
        args.pipeline_id = f"py-{uuid.uuid4().hex[:12]}"
    if args.timeout <= 0:
        ap.error("--timeout must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    submission = build_submission(args)
    body = json.dumps(submission, separators=(",", ":")).encode("utf-8")
    if args.dry_run:
        print(json.dumps(submission, indent=2))
        return 0
    scheme = urlsplit(args.broker_url.split(",")[0].strip()).scheme
    subject = f"{args.prefix}.submit"
    try:
        if scheme in ("amqp", "amqps"):
            said = publish_rabbitmq(args.broker_url, subject, body, args.pipeline_id, args.timeout)
        elif scheme in ("nats", "tls"):
            said = asyncio.run(publish_nats(args.broker_url, subject, body, args.pipeline_id,
                                            args.timeout))
        else:
            print(f"unsupported broker URL scheme {scheme!r}: use amqp://, amqps://, nats:// or "
                  "tls://", file=sys.stderr)
            return 2
    except PublishError as e:
        print(f"submit_pipeline: {e}", file=sys.stderr)
        return 1
    print(f"submit_pipeline: pipeline {args.pipeline_id} with {len(submission['items'])} items: "
          f"{said}", file=sys.stderr)
    print(args.pipeline_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
