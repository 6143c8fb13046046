#!/usr/bin/env python3
"""Our own invariants of deploy/prometheus/alerts.yml (promtool checks syntax and behaviour).

- every rule is an alert with `for`, a severity label (critical|warning), and summary,
  description and runbook_url annotations; runbook_url points at a heading of
  docs/operations.md (GitHub anchor = the alert name in lower case);
- every fleet_* metric an expression uses is documented in docs/metrics.md;
- every alert has a promtool test where it fires and one where it must not fire
  (exp_alerts: []) in deploy/prometheus/alerts.test.yml;
- the alerts issue 5 asks for exist.
Needs PyYAML (the venv from lib/tools.sh).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics_catalog import base_metric, doc_metrics, metric_names_in_promql  # noqa: E402

REQUIRED = {
    "FleetStageSilentStall": "a stage with backlog and no completions",
    "FleetStageNoConsumer": "a stage with backlog and no consumers",
    "FleetJobsStalled": "jobs stalled by kind",
    "FleetDeadLettersGrowing": "DLQ growing",
    "FleetRetryBudgetExhausted": "retry budget exhausted",
    "FleetCircuitOpenTooLong": "circuit breaker open too long",
    "FleetWorkerDown": "worker down",
    "FleetCoordinatorAbsent": "coordinator absent",
    "FleetPipelineOverdue": "pipeline overdue",
    "FleetBrokerDisconnected": "broker disconnected",
    "FleetHandlerErrorRatioHigh": "high handler error ratio",
}
SEVERITIES = {"critical", "warning"}


def github_anchors(md: Path) -> set[str]:
    anchors = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def main() -> int:
    repo = Path(sys.argv[1]).resolve()
    rules = yaml.safe_load((repo / "deploy/prometheus/alerts.yml").read_text())
    tests = yaml.safe_load((repo / "deploy/prometheus/alerts.test.yml").read_text())
    docs, errors = doc_metrics(repo / "docs/metrics.md")
    ops = repo / "docs/operations.md"
    anchors = github_anchors(ops) if ops.exists() else set()
    if not ops.exists():
        errors.append("docs/operations.md is missing (runbooks)")

    alerts = {}
    for g in rules.get("groups", []):
        if "query_offset" in g:
            errors.append(f"group {g['name']}: query_offset is not understood by promtool 2.42")
        for r in g.get("rules", []):
            if "alert" not in r:
                continue
            name = r["alert"]
            if name in alerts:
                errors.append(f"{name}: defined twice")
            alerts[name] = r
            if "for" not in r:
                errors.append(f"{name}: no `for`")
            sev = (r.get("labels") or {}).get("severity")
            if sev not in SEVERITIES:
                errors.append(f"{name}: severity label {sev!r} is not one of {sorted(SEVERITIES)}")
            ann = r.get("annotations") or {}
            for key in ("summary", "description", "runbook_url"):
                if not ann.get(key):
                    errors.append(f"{name}: annotation `{key}` missing")
            url = ann.get("runbook_url", "")
            m = re.search(r"docs/operations\.md#([\w-]+)$", url)
            if not m:
                errors.append(f"{name}: runbook_url {url!r} does not point into docs/operations.md#<anchor>")
            elif m.group(1) != name.lower():
                errors.append(f"{name}: runbook anchor #{m.group(1)} should be #{name.lower()}")
            elif ops.exists() and m.group(1) not in anchors:
                errors.append(f"{name}: docs/operations.md has no heading for #{m.group(1)} (add `### {name}`)")
            for metric in metric_names_in_promql(r["expr"]):
                if base_metric(metric, docs) is None:
                    errors.append(f"{name}: expression uses `{metric}`, which docs/metrics.md does not document")
    for name, why in REQUIRED.items():
        if name not in alerts:
            errors.append(f"required alert {name} ({why}) is missing")

    fires, quiet = set(), set()
    for t in tests.get("tests", []):
        for a in t.get("alert_rule_test", []) or []:
            (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
    for name in alerts:
        if name not in fires:
            errors.append(f"{name}: alerts.test.yml has no case where it fires")
        if name not in quiet:
            errors.append(f"{name}: alerts.test.yml has no case where it must not fire (exp_alerts: [])")
    for name in (fires | quiet) - set(alerts):
        errors.append(f"alerts.test.yml tests unknown alert {name}")

    # fleetctl commands and flags the runbooks cite exist in services/fleetctl/src/cli.rs
    cli = (repo / "services/fleetctl/src/cli.rs").read_text(encoding="utf-8")

    def variants(enum: str) -> set[str]:
        body = cli[cli.index(f"pub enum {enum} {{"):]
        body = body[: body.index("\n}")]
        return {re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower() for v in re.findall(r"^    ([A-Z]\w*)\b", body, re.M)}

    commands, dlq_commands = variants("Command"), variants("DlqCommand")
    flags = {f.replace("_", "-") for f in re.findall(r"#\[arg\([^)]*\blong\b[^)]*\)\]\s*(?:///[^\n]*\n\s*)*pub (\w+)", cli)}
    if ops.exists():
        text = ops.read_text(encoding="utf-8")
        for m in re.finditer(r"`fleetctl ([^`]*)`", text):
            words = m.group(1).split()
            if not words or words[0].startswith("-"):
                continue
            if words[0].split("|")[0] not in commands:
                errors.append(f"docs/operations.md cites `fleetctl {m.group(1)}`: no such subcommand ({sorted(commands)})")
            elif words[0] == "dlq" and len(words) > 1 and not all(w in dlq_commands for w in words[1].split("|")):
                errors.append(f"docs/operations.md cites `fleetctl {m.group(1)}`: no such dlq subcommand ({sorted(dlq_commands)})")
            for w in words:
                if w.startswith("--") and w[2:].split("=")[0] not in flags:
                    errors.append(f"docs/operations.md cites `fleetctl {m.group(1)}`: fleetctl has no flag {w}")

    for e in errors:
        print(f"  - {e}", file=sys.stderr)
    if errors:
        print(f"deploy/prometheus/alerts.yml: {len(errors)} problems above", file=sys.stderr)
        return 1
    print(f"alerts.yml invariants OK: {len(alerts)} alerts, each with for/severity/summary/description/runbook, fired and quiet in tests, metrics documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
