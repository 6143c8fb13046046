#!/usr/bin/env python3
"""Fails when docs/metrics.md and the Rust code disagree about the exported metrics.

Usage: check_metrics_docs.py REPO                      (code vs docs)
       check_metrics_docs.py REPO --scrape SERVICE FILE (a live /metrics output vs docs)
Stdlib only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics_catalog import base_metric, code_metrics, doc_label_values, doc_metrics  # noqa: E402

WORKERS = {"fleet-analyzer", "fleet-summarizer", "fleet-writer"}


def enum_values(path: Path, anchor: str) -> set[str]:
    """The `=> "value"` string literals of the block that starts at `anchor`."""
    text = path.read_text(encoding="utf-8")
    i = text.find(anchor)
    if i < 0:
        raise SystemExit(f"check_metrics_docs: `{anchor}` not found in {path}; update the checker")
    j = text.find("\n}", i)
    return set(re.findall(r'=>\s*"([a-z_]+)"', text[i:j]))


def const_array(path: Path, const: str) -> set[str]:
    text = path.read_text(encoding="utf-8")
    m = re.search(rf"pub const {const}\s*:\s*\[&str;\s*\d+\]\s*=\s*\[(.*?)\];", text, re.S)
    if not m:
        raise SystemExit(f"check_metrics_docs: `{const}` not found in {path}; update the checker")
    return set(re.findall(r'"([a-z_]+)"', m.group(1)))


def check_code(repo: Path) -> list[str]:
    doc_path = repo / "docs/metrics.md"
    code, errors = code_metrics(repo)
    docs, derr = doc_metrics(doc_path)
    errors += derr
    for name in sorted(set(code) - set(docs)):
        errors.append(f"`{name}` is exported by the code ({', '.join(code[name].sites[:3])}) but missing from docs/metrics.md")
    for name in sorted(set(docs) - set(code)):
        errors.append(f"docs/metrics.md:{docs[name].line}: `{name}` is documented but no Rust source emits or declares it")
    for name in sorted(set(code) & set(docs)):
        c, d = code[name], docs[name]
        if not c.emitted:
            errors.append(f"`{name}` is declared/described ({', '.join(c.sites)}) but never emitted by a counter!/gauge!/histogram! call")
        if len(c.types) > 1:
            errors.append(f"`{name}` is used as several types in the code: {sorted(c.types)} ({', '.join(c.sites)})")
        elif c.types and d.type not in c.types:
            errors.append(f"docs/metrics.md:{d.line}: `{name}` is documented as {d.type}, the code makes it a {next(iter(c.types))}")
        if c.emitted and c.labels != d.labels:
            errors.append(f"docs/metrics.md:{d.line}: `{name}` labels documented {sorted(d.labels) or '—'}, the code uses {sorted(c.labels) or '—'}")
        if d.type == "counter" and not name.endswith("_total"):
            errors.append(f"`{name}`: counters must end in _total")
        if name.endswith("_total") and d.type != "counter":
            errors.append(f"`{name}`: only counters may end in _total")
    # Every (metric, label) has its closed value set documented.
    rows = doc_label_values(doc_path)
    for name, d in docs.items():
        for label in d.labels:
            if not any(r[0] == label and name in r[1] for r in rows):
                errors.append(f"docs/metrics.md: label `{label}` of `{name}` has no row in the Label values table")
    for label, ms, _, line in rows:
        for m in ms:
            if m not in docs:
                errors.append(f"docs/metrics.md:{line}: Label values row `{label}` names unknown metric `{m}`")
            elif label not in docs[m].labels:
                errors.append(f"docs/metrics.md:{line}: `{m}` has no label `{label}`")
    # The closed sets marked (checked) equal the code's.
    expected = {
        ("outcome", "fleet_jobs_finished_total"): const_array(repo / "shared/runtime/src/telemetry/names.rs", "OUTCOMES"),
        ("outcome", "fleet_llm_requests_total"): const_array(repo / "services/summarizer/src/telemetry.rs", "OUTCOMES"),
        ("kind", "fleet_jobs_stalled"): enum_values(repo / "services/coordinator/src/model.rs", "StallKind {"),
        ("state", "fleet_pipelines"): enum_values(repo / "services/coordinator/src/model.rs", "PipelineState {"),
        ("reason", "fleet_dead_letters_total"): enum_values(repo / "shared/protocol/src/deadletter.rs", "DeadLetterReason::AttemptsExhausted =>"),
    }
    for (label, metric), values in expected.items():
        row = next((r for r in rows if r[0] == label and metric in r[1]), None)
        if row is None:
            continue  # reported above
        if "*(checked)*" not in row[2]:
            errors.append(f"docs/metrics.md:{row[3]}: the `{label}` values of `{metric}` must be marked *(checked)*")
        cell = row[2].split("(`", 1)[0] if "(`" in row[2] else row[2]
        documented = set(re.findall(r"`([a-z_]+)`", cell))
        if documented != values:
            errors.append(
                f"docs/metrics.md:{row[3]}: `{label}` values of `{metric}` documented {sorted(documented)}, the code has {sorted(values)}"
            )
    return errors


def check_scrape(repo: Path, service: str, path: Path) -> list[str]:
    """Every series in SERVICE's live exposition is documented as exported by SERVICE."""
    docs, errors = doc_metrics(repo / "docs/metrics.md")
    seen = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
        seen.add(series)
        base = base_metric(series, docs)
        if base is None:
            errors.append(f"{service} exports `{series}`, which docs/metrics.md does not document")
            continue
        by = docs[base].exported_by
        ok = by == "all" or (by == "workers" and service in WORKERS) or service in [s.strip() for s in by.split(",")]
        if not ok:
            errors.append(f"{service} exports `{base}`, documented as exported by `{by}` only (docs/metrics.md:{docs[base].line})")
    print(f"  {service}: {len(seen)} series names, all documented" if not errors else "", end="")
    return errors


def main() -> int:
    repo = Path(sys.argv[1]).resolve()
    if len(sys.argv) == 5 and sys.argv[2] == "--scrape":
        errors = check_scrape(repo, sys.argv[3], Path(sys.argv[4]))
        if not errors:
            print()
    else:
        errors = check_code(repo)
        if not errors:
            code, _ = code_metrics(repo)
            print(f"docs/metrics.md matches the code: {len(code)} metrics, their types, labels and checked value sets")
    for e in errors:
        print(f"  - {e}", file=sys.stderr)
    if errors:
        print(f"docs/metrics.md and the code disagree ({len(errors)} problems above): update docs/metrics.md (or the code)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
