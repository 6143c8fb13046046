#!/usr/bin/env python3
"""Checks deploy/compose.yaml, deploy/prometheus/prometheus.yml and deploy/Dockerfile against the
binaries, without a container engine. Needs PyYAML (the venv from lib/tools.sh)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_code import BINARIES, duration_s, env_options  # noqa: E402

INTERP = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def interp(v: str) -> str:
    """Compose interpolation with the defaults (no environment)."""
    return INTERP.sub(lambda m: m.group(2) or "", str(v).replace("$$", "\0")).replace("\0", "$")


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def main() -> int:
    repo = Path(sys.argv[1]).resolve()
    errors: list[str] = []
    compose = yaml.safe_load((repo / "deploy/compose.yaml").read_text())
    prom = yaml.safe_load((repo / "deploy/prometheus/prometheus.yml").read_text())
    dockerfile = (repo / "deploy/Dockerfile").read_text()
    opts = env_options(repo)
    services = compose.get("services", {})

    # --- Dockerfile ---
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.M | re.I)
    if not stages or stages[0][0] != "rust:1.95-bookworm":
        errors.append("Dockerfile: the builder stage must be FROM rust:1.95-bookworm")
    if not stages or stages[-1][0] != "debian:bookworm-slim":
        errors.append("Dockerfile: the runtime stage must be FROM debian:bookworm-slim")
    if not re.search(r"cargo build --release --locked", dockerfile):
        errors.append("Dockerfile: must run `cargo build --release --locked`")
    for b in list(BINARIES) + ["fleetctl"]:
        if f"-p {b}" not in dockerfile or not re.search(rf"for b in [^;]*\b{b}\b", dockerfile):
            errors.append(f"Dockerfile: {b} is not built and copied into the image")
    if "ca-certificates" not in dockerfile:
        errors.append("Dockerfile: the runtime image needs ca-certificates")
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        errors.append("Dockerfile: the runtime image must run as a non-root USER")
    if not re.search(r"^HEALTHCHECK\s", dockerfile, re.M):
        errors.append("Dockerfile: no HEALTHCHECK")
    for src in re.findall(r"^COPY\s+(?!--from)(\S+)\s", dockerfile, re.M):
        if src != "." and not (repo / src).exists():
            errors.append(f"Dockerfile: COPY source {src} does not exist")
    image_copies = set(re.findall(r"^COPY\s+(?!--from)\S+\s+(/\S+)", dockerfile, re.M))

    # --- compose: fleet services ---
    fleet = {}
    for name, s in services.items():
        cmd = s.get("command") or []
        cmd = cmd if isinstance(cmd, list) else cmd.split()
        if cmd and cmd[0] in BINARIES:
            fleet[cmd[0]] = (name, s)
    for b in BINARIES:
        if b not in fleet:
            errors.append(f"compose: no service runs {b}")
    admin_targets = {}
    for binary, (name, s) in fleet.items():
        where = f"compose service {name} ({binary})"
        env = {k: interp(v) for k, v in (s.get("environment") or {}).items()}
        for k in env:
            if k.startswith("FLEET_") and k not in opts[binary]:
                errors.append(f"{where}: {k} is not an option of {binary} (no `env = \"{k}\"` in its sources)")
        defaults = {k: v for k, v in opts[binary].items() if v is not None}
        eff = {**defaults, **env}
        admin = port_of(eff["FLEET_ADMIN_ADDR"])
        if admin != port_of(defaults["FLEET_ADMIN_ADDR"]):
            errors.append(f"{where}: FLEET_ADMIN_ADDR port {admin} differs from the default {defaults['FLEET_ADMIN_ADDR']}")
        admin_targets[name] = admin
        url = eff.get("FLEET_BROKER_URL", "")
        scheme = url.split("://")[0]
        if scheme not in ("amqp", "amqps", "nats", "tls"):
            errors.append(f"{where}: FLEET_BROKER_URL {url!r} is not a real broker URL")
        else:
            host = re.sub(r"^.*@", "", url.split("://", 1)[1]).split("/")[0].split(":")[0]
            if host not in services:
                errors.append(f"{where}: FLEET_BROKER_URL host {host!r} is not a compose service")
        if binary in ("fleet-writer", "fleet-coordinator"):
            db = eff.get("FLEET_DATABASE_URL", "")
            if not db.startswith("postgres://") or db.split("@")[-1].split(":")[0] not in services:
                errors.append(f"{where}: FLEET_DATABASE_URL must point at the compose PostgreSQL")
        if binary == "fleet-coordinator":
            listen = port_of(eff["FLEET_LISTEN"])
            if listen != port_of(defaults["FLEET_LISTEN"]):
                errors.append(f"{where}: FLEET_LISTEN port {listen} differs from the default {defaults['FLEET_LISTEN']}")
            published = [str(p).split(":")[-1] for p in s.get("ports", [])]
            if str(listen) not in published:
                errors.append(f"{where}: the API port {listen} is not published (ports: {published})")
        if "FLEET_ANALYZERS_CONFIG" in env and env["FLEET_ANALYZERS_CONFIG"] not in image_copies:
            errors.append(f"{where}: FLEET_ANALYZERS_CONFIG {env['FLEET_ANALYZERS_CONFIG']} is not a file the Dockerfile copies")
        grace = duration_s(str(s.get("stop_grace_period", "10s")))
        drain = duration_s(eff.get("FLEET_DRAIN_DEADLINE", "25s"))
        if grace <= drain:
            errors.append(f"{where}: stop_grace_period {grace:g}s must exceed FLEET_DRAIN_DEADLINE {drain:g}s")
        if s.get("image") != "fleet:dev" or (s.get("build") or {}).get("dockerfile") != "deploy/Dockerfile":
            errors.append(f"{where}: must use the one fleet image built from deploy/Dockerfile")
    # health-ordered start-up
    for name, s in services.items():
        deps = s.get("depends_on") or {}
        if isinstance(deps, list):
            if any(n in fleet.values() for n in [name]):
                errors.append(f"compose service {name}: depends_on must use condition: service_healthy")
            continue
        for dep, cond in deps.items():
            if dep not in services:
                errors.append(f"compose service {name}: depends on unknown service {dep}")
            elif (cond or {}).get("condition") != "service_healthy":
                errors.append(f"compose service {name}: depends_on {dep} must use condition: service_healthy")
            elif not services[dep].get("healthcheck") and services[dep].get("image") != "fleet:dev":
                errors.append(f"compose service {name}: {dep} has no healthcheck, so service_healthy never holds")
    for b in ("fleet-analyzer", "fleet-summarizer", "fleet-writer"):
        if b in fleet:
            deps = fleet[b][1].get("depends_on") or {}
            if fleet.get("fleet-coordinator", ("",))[0] not in deps:
                errors.append(f"compose: {b} must start after the coordinator is healthy")
    for infra in ("rabbitmq", "nats", "postgres", "prometheus"):
        if infra not in services:
            errors.append(f"compose: service {infra} is missing")
    if "nats" in services and "-js" not in (services["nats"].get("command") or []):
        errors.append("compose: nats must run with JetStream (-js)")
    if "rabbitmq" in services and "management" not in services["rabbitmq"].get("image", ""):
        errors.append("compose: rabbitmq must use a management image")

    # --- Prometheus: rules mounted where prometheus.yml loads them; targets = fleet services ---
    mounts = {}
    for v in services.get("prometheus", {}).get("volumes", []):
        src, dst = str(v).split(":")[:2]
        mounts[dst] = (repo / "deploy" / src).resolve()
    for rf in prom.get("rule_files", []):
        if mounts.get(rf) != (repo / "deploy/prometheus/alerts.yml").resolve():
            errors.append(f"prometheus.yml loads {rf}, which compose does not mount from deploy/prometheus/alerts.yml")
    jobs = {}
    for sc in prom.get("scrape_configs", []):
        for st in sc.get("static_configs", []):
            for t in st.get("targets", []):
                jobs[sc["job_name"]] = t
    for binary, (name, _) in fleet.items():
        t = jobs.get(binary)
        if t != f"{name}:{admin_targets.get(name)}":
            errors.append(f"prometheus.yml: job {binary} must scrape {name}:{admin_targets.get(name)} (the alerts match job names), has {t!r}")

    for e in errors:
        print(f"  - {e}", file=sys.stderr)
    if errors:
        print(f"deploy/: {len(errors)} problems above", file=sys.stderr)
        return 1
    print(f"deploy/compose.yaml, prometheus.yml, Dockerfile consistent with the binaries ({len(fleet)} fleet services; env vars, ports, health order, grace, rule mount)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
