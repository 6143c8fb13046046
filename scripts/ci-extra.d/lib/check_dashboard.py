#!/usr/bin/env python3
"""deploy/grafana/fleet-dashboard.json: parses as JSON, panels are well-formed (unique ids,
titles, the $datasource variable), every fleet_* metric a query (or template variable) uses is
documented in docs/metrics.md (histogram series via _bucket/_sum/_count), and the views the
issue asks for exist. Stdlib only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics_catalog import base_metric, doc_metrics, metric_names_in_promql  # noqa: E402

REQUIRED = {
    "throughput per stage": "fleet_jobs_finished_total",
    "in-flight": "fleet_jobs_in_flight",
    "latency percentiles": "fleet_job_duration_seconds_bucket",
    "DLQ": "fleet_dead_letters_total",
    "breaker state": "fleet_circuit_state",
    "stalls": "fleet_jobs_stalled",
    "pipelines by state": "fleet_pipelines",
}


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


def main() -> int:
    repo = Path(sys.argv[1]).resolve()
    path = repo / "deploy/grafana/fleet-dashboard.json"
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        print(f"{path}: not valid JSON: {e}", file=sys.stderr)
        return 1
    docs, errors = doc_metrics(repo / "docs/metrics.md")
    used: set[str] = set()
    exprs: list[str] = []
    ids = set()
    for p in walk(dash.get("panels", [])):
        if p.get("id") in ids:
            errors.append(f"panel id {p.get('id')} is used twice")
        ids.add(p.get("id"))
        if not p.get("title"):
            errors.append(f"panel {p.get('id')} has no title")
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            errors.append(f"panel {p.get('title')!r}: datasource must be the $datasource variable")
        if not p.get("targets"):
            errors.append(f"panel {p.get('title')!r}: no queries")
        for t in p.get("targets", []):
            exprs.append(f"{p.get('title')}: {t.get('expr', '')}")
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        exprs.append(f"variable {v.get('name')}: {q.get('query') if isinstance(q, dict) else q}")
    for e in exprs:
        for m in metric_names_in_promql(e):
            used.add(m)
            if base_metric(m, docs) is None:
                errors.append(f"{e.split(':')[0]}: uses `{m}`, which docs/metrics.md does not document (and the code does not export)")
    for what, metric in REQUIRED.items():
        if metric not in used:
            errors.append(f"no panel shows {what} ({metric})")
    if not any("histogram_quantile" in e and "fleet_job_duration_seconds_bucket" in e for e in exprs):
        errors.append("no latency percentile panel (histogram_quantile over fleet_job_duration_seconds_bucket)")
    for e in errors:
        print(f"  - {e}", file=sys.stderr)
    if errors:
        print(f"deploy/grafana/fleet-dashboard.json: {len(errors)} problems above", file=sys.stderr)
        return 1
    if len(sys.argv) > 3 and sys.argv[2] == "--rules-out":
        # every panel query as a recording rule, so `promtool check rules` parses the PromQL
        lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
        for i, e in enumerate(exprs):
            if e.startswith("variable "):
                continue
            q = e.split(": ", 1)[1].replace("$__rate_interval", "5m").replace("$stage", ".*")
            lines += [f"      - record: dashboard:query{i}", f"        expr: {json.dumps(q)}"]
        Path(sys.argv[3]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    documented = {base_metric(m, docs) for m in used}
    print(f"fleet-dashboard.json OK: {len(ids)} panels, {len(exprs)} queries over {len(documented)} documented metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
