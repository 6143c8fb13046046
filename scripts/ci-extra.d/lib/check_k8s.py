#!/usr/bin/env python3
"""fleet's own invariants on a rendered kustomize overlay (kubectl kustomize output).

Usage: check_k8s.py REPO OVERLAY(rabbitmq|nats) RENDERED.yaml
Needs PyYAML (the venv from lib/tools.sh).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_code import (  # noqa: E402
    BINARIES, WORKERS, check_names_source, duration_s, env_options, jobs_queue, jobs_stream, stages,
)

CONSUMER_TIMEOUT_MARGIN_S = 60  # shared/runtime/src/config.rs CONSUMER_TIMEOUT_MARGIN


def main() -> int:
    repo, overlay, rendered = Path(sys.argv[1]).resolve(), sys.argv[2], Path(sys.argv[3])
    check_names_source(repo)
    objs = [o for o in yaml.safe_load_all(rendered.read_text()) if o]
    by_kind: dict[str, list[dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    errors: list[str] = []
    env_opts = env_options(repo)
    stage_of = stages(repo)
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    secrets_needed = set()
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}

    if set(deployments) != set(BINARIES):
        errors.append(f"Deployments {sorted(deployments)} != one per binary {sorted(BINARIES)}")

    effective: dict[str, dict[str, str]] = {}
    for name, d in deployments.items():
        spec = d["spec"]["template"]["spec"]
        pod_labels = d["spec"]["template"]["metadata"].get("labels", {})
        where = f"Deployment/{name}"
        if pod_labels.get("app.kubernetes.io/name") != name:
            errors.append(f"{where}: pod label app.kubernetes.io/name must be {name} (the PodMonitor's jobLabel; alerts use job=\"{name}\")")
        psc = spec.get("securityContext", {})
        grace = spec.get("terminationGracePeriodSeconds", 30)
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            cw = f"{where} container {c['name']}"
            binary = (c.get("command") or [""])[0].rsplit("/", 1)[-1]
            if binary != name:
                errors.append(f"{cw}: command runs {binary!r}, expected {name}")
            opts = env_opts.get(name, {})
            env: dict[str, str] = {}
            for ef in c.get("envFrom", []):
                ref = ef.get("configMapRef", {}).get("name")
                if ref not in configmaps:
                    errors.append(f"{cw}: envFrom ConfigMap {ref} is not in the render")
                else:
                    env.update(configmaps[ref])
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = e["value"]
                elif "secretKeyRef" in e.get("valueFrom", {}):
                    env[e["name"]] = "<secret>"
                    secrets_needed.add(e["valueFrom"]["secretKeyRef"]["name"])
                    if e["valueFrom"]["secretKeyRef"].get("optional"):
                        errors.append(f"{cw}: {e['name']} comes from an optional Secret: a missing Secret must stop the pod, not start it without the value")
            for k in env:
                if k.startswith("FLEET_") and k not in opts:
                    errors.append(f"{cw}: {k} is not an option of {name} (no `env = \"{k}\"` in its sources)")
            eff = {k: v for k, v in opts.items() if v is not None}
            eff.update(env)
            effective[name] = eff
            # probes on the admin port
            admin_port = int(eff.get("FLEET_ADMIN_ADDR", "0.0.0.0:9090").rsplit(":", 1)[1])
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            if ports.get("metrics") != admin_port:
                errors.append(f"{cw}: port `metrics` is {ports.get('metrics')}, FLEET_ADMIN_ADDR listens on {admin_port}")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                hg = (c.get(probe) or {}).get("httpGet")
                if not hg:
                    errors.append(f"{cw}: no {probe} (httpGet {path})")
                    continue
                port = hg.get("port")
                port = ports.get(port, port) if isinstance(port, str) else port
                if hg.get("path") != path or port != admin_port:
                    errors.append(f"{cw}: {probe} must GET {path} on {admin_port}, has {hg.get('path')} on {port}")
            if name == "fleet-coordinator":
                listen = int(eff.get("FLEET_LISTEN", "0.0.0.0:8080").rsplit(":", 1)[1])
                if ports.get("http") != listen:
                    errors.append(f"{cw}: port `http` is {ports.get('http')}, FLEET_LISTEN is {listen}")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(kind, {}):
                        errors.append(f"{cw}: resources.{kind}.{r} missing")
            # drain deadline vs grace period
            drain = duration_s(eff.get("FLEET_DRAIN_DEADLINE", "25s"))
            if not grace > drain + 5:
                errors.append(f"{cw}: terminationGracePeriodSeconds {grace} must exceed FLEET_DRAIN_DEADLINE ({drain:g}s) by more than 5s (flush, exit)")
            # security
            csc = c.get("securityContext", {})
            if not (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                errors.append(f"{cw}: runAsNonRoot is not set")
            if (csc.get("runAsUser", psc.get("runAsUser", 0)) or 0) == 0:
                errors.append(f"{cw}: runAsUser must be a non-zero uid")
            if not csc.get("readOnlyRootFilesystem"):
                errors.append(f"{cw}: readOnlyRootFilesystem is not true")
            if csc.get("allowPrivilegeEscalation", True):
                errors.append(f"{cw}: allowPrivilegeEscalation must be false")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if "emptyDir" not in vols.get(mounts.get("/tmp", ""), {}):
                errors.append(f"{cw}: /tmp must be an emptyDir mount (the root filesystem is read-only)")
            if name in ("fleet-writer", "fleet-coordinator"):
                if env.get("FLEET_DATABASE_URL") != "<secret>":
                    errors.append(f"{cw}: FLEET_DATABASE_URL must come from a Secret (the SQLite default needs a writable root and one replica)")
                if "FLEET_SQLITE_PATH" in env:
                    errors.append(f"{cw}: FLEET_SQLITE_PATH must not be used in Kubernetes")
            if name == "fleet-coordinator" and env.get("FLEET_API_TOKEN") != "<secret>":
                errors.append(f"{cw}: FLEET_API_TOKEN must come from a Secret (the API listens on the pod network)")
            if env.get("FLEET_BROKER_URL") != "<secret>":
                errors.append(f"{cw}: FLEET_BROKER_URL must come from a Secret (it carries credentials)")
            # RabbitMQ consumer_timeout rule (RuntimeConfig::validate)
            if overlay == "rabbitmq":
                mt = duration_s(eff.get("FLEET_MAX_TIMEOUT", "10m"))
                ct = duration_s(eff.get("FLEET_RABBITMQ_CONSUMER_TIMEOUT", "30m"))
                if mt + CONSUMER_TIMEOUT_MARGIN_S >= ct:
                    errors.append(f"{cw}: FLEET_MAX_TIMEOUT + 60s must stay below FLEET_RABBITMQ_CONSUMER_TIMEOUT")
        # Service and PDB
        sel_ok = lambda sel: sel and all(pod_labels.get(k) == v for k, v in sel.items())  # noqa: E731
        if not any(sel_ok(s["spec"].get("selector")) for s in by_kind.get("Service", [])):
            errors.append(f"{where}: no Service selects its pods")
        if not any(sel_ok(p["spec"]["selector"].get("matchLabels")) for p in by_kind.get("PodDisruptionBudget", [])):
            errors.append(f"{where}: no PodDisruptionBudget selects its pods")
        if not any(sel_ok(pm["spec"]["selector"].get("matchLabels")) for pm in by_kind.get("PodMonitor", []) + by_kind.get("ServiceMonitor", [])):
            errors.append(f"{where}: no PodMonitor/ServiceMonitor selects its pods")

    for pm in by_kind.get("PodMonitor", []):
        if pm["spec"].get("jobLabel") != "app.kubernetes.io/name":
            errors.append(f"PodMonitor/{pm['metadata']['name']}: jobLabel must be app.kubernetes.io/name (alerts match job=\"fleet-...\")")
        for ep in pm["spec"].get("podMetricsEndpoints", []):
            if ep.get("port") != "metrics" or ep.get("path", "/metrics") != "/metrics":
                errors.append(f"PodMonitor/{pm['metadata']['name']}: endpoint must be port `metrics`, path /metrics")

    # PrometheusRule == deploy/prometheus/alerts.yml
    rules = yaml.safe_load((repo / "deploy/prometheus/alerts.yml").read_text())
    prs = by_kind.get("PrometheusRule", [])
    if len(prs) != 1 or prs[0]["spec"] != {"groups": rules["groups"]}:
        errors.append("the PrometheusRule does not carry exactly deploy/prometheus/alerts.yml's groups (regenerate it)")

    # KEDA
    sos = {s["spec"]["scaleTargetRef"]["name"]: s for s in by_kind.get("ScaledObject", [])}
    auths = {t["metadata"]["name"] for t in by_kind.get("TriggerAuthentication", [])}
    if set(sos) != set(WORKERS):
        errors.append(f"ScaledObjects target {sorted(sos)}; expected exactly the workers {list(WORKERS)} (the coordinator is not autoscaled on queue length)")
    for target, so in sos.items():
        w = f"ScaledObject/{so['metadata']['name']}"
        spec = so["spec"]
        if target not in deployments or so["spec"]["scaleTargetRef"].get("kind", "Deployment") != "Deployment":
            errors.append(f"{w}: scaleTargetRef {target} is not a Deployment in the render")
            continue
        eff = effective.get(target, {})
        grace = deployments[target]["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        mn, mx = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if not 0 <= mn <= mx or mx < 1:
            errors.append(f"{w}: need 0 <= minReplicaCount ({mn}) <= maxReplicaCount ({mx}), max >= 1")
        if spec.get("cooldownPeriod", 300) <= grace:
            errors.append(f"{w}: cooldownPeriod {spec.get('cooldownPeriod', 300)} must exceed terminationGracePeriodSeconds {grace} (> FLEET_DRAIN_DEADLINE)")
        sd = (((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior") or {}).get("scaleDown", {})
        if sd.get("stabilizationWindowSeconds", 300) <= grace:
            errors.append(f"{w}: HPA scaleDown stabilizationWindowSeconds must exceed terminationGracePeriodSeconds {grace}")
        prefix = eff.get("FLEET_PREFIX", "fleet")
        stage = eff.get("FLEET_STAGE", stage_of[target])
        trigs = spec.get("triggers", [])
        want = {"rabbitmq": "rabbitmq", "nats": "nats-jetstream"}[overlay]
        if [t["type"] for t in trigs] != [want]:
            errors.append(f"{w}: expected one `{want}` trigger, has {[t['type'] for t in trigs]}")
            continue
        md = trigs[0].get("metadata", {})
        if want == "rabbitmq":
            if md.get("mode") != "QueueLength" or "queueLength" in md:
                errors.append(f"{w}: rabbitmq trigger must use mode: QueueLength + value (queueLength is deprecated)")
            if not re.fullmatch(r"[1-9]\d*", str(md.get("value", ""))):
                errors.append(f"{w}: rabbitmq value must be a positive integer string, is {md.get('value')!r}")
            if md.get("queueName") != jobs_queue(prefix, stage):
                errors.append(f"{w}: queueName {md.get('queueName')!r} is not fleet's queue {jobs_queue(prefix, stage)!r} (prefix {prefix}, stage {stage})")
            if md.get("protocol", "auto") != "amqp" and md.get("mode") != "QueueLength":
                errors.append(f"{w}: rate modes need protocol: http")
            ref = (trigs[0].get("authenticationRef") or {}).get("name")
            if ref not in auths:
                errors.append(f"{w}: authenticationRef {ref!r} is not a TriggerAuthentication in the render")
            if "host" in md:
                errors.append(f"{w}: the broker URL (credentials) belongs in the TriggerAuthentication, not in metadata.host")
        else:
            ep = md.get("natsServerMonitoringEndpoint", "")
            if not re.fullmatch(r"[A-Za-z0-9.\-]+:\d+", ep):
                errors.append(f"{w}: natsServerMonitoringEndpoint must be host:port without a scheme, is {ep!r}")
            if md.get("account") != "$G":
                errors.append(f"{w}: account must be $G (no NATS accounts configured)")
            if md.get("stream") != jobs_stream(prefix):
                errors.append(f"{w}: stream {md.get('stream')!r} is not fleet's {jobs_stream(prefix)!r}")
            if md.get("consumer") != stage:
                errors.append(f"{w}: consumer {md.get('consumer')!r} is not the stage's durable consumer {stage!r} (a wrong name silently scales on the stream)")
            if not re.fullmatch(r"[1-9]\d*", str(md.get("lagThreshold", ""))):
                errors.append(f"{w}: lagThreshold must be a positive integer string, is {md.get('lagThreshold')!r}")
            # max_ack_pending is stage-level: every replica's slots must fit
            slots = int(eff.get("FLEET_PREFETCH") or 0) or (
                2 * int(eff.get("FLEET_BATCH_SIZE", "32")) if target == "fleet-writer" else int(eff.get("FLEET_CONCURRENCY", "8"))
            )
            map_ = int(eff.get("FLEET_MAX_ACK_PENDING", "1024"))
            if map_ < mx * slots:
                errors.append(f"{w}: FLEET_MAX_ACK_PENDING {map_} < maxReplicaCount {mx} x {slots} slots: scaled-out replicas would starve")

    for e in errors:
        print(f"  - {e}", file=sys.stderr)
    if errors:
        print(f"k8s/overlays/{overlay}: {len(errors)} invariant violations above", file=sys.stderr)
        return 1
    print(f"k8s/overlays/{overlay}: invariants OK ({len(deployments)} Deployments, {len(sos)} ScaledObjects; Secrets referenced: {', '.join(sorted(secrets_needed))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
