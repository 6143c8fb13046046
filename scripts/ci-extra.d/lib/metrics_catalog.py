#!/usr/bin/env python3
"""The metrics fleet's Rust code exports, and the ones docs/metrics.md documents.

Stdlib only. Used by check_metrics_docs.py, check_dashboard.py and check_rules.py.

Code side: every `metrics::counter!/gauge!/histogram!(NAME, "label" => ...)` call and
every `describe_*!(NAME, ...)` in the non-test Rust sources of shared/ and services/,
plus every `pub const X: &str = "fleet_..."` in a metric-name module (names.rs,
telemetry.rs, metrics.rs). NAME is a string literal or a const path; a const is
resolved in the calling crate first, then in shared/runtime (the runtime's names.rs).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

MACRO_RE = re.compile(r"\b(?:metrics::)?(describe_)?(counter|gauge|histogram)!\s*\(")
CONST_RE = re.compile(r'pub\s+const\s+([A-Z][A-Z0-9_]*)\s*:\s*&str\s*=\s*"([a-z_:][a-z0-9_:]*)"\s*;')
LABEL_RE = re.compile(r'"([a-zA-Z_][a-zA-Z0-9_]*)"\s*=>')
NAME_MODULES = {"names.rs", "telemetry.rs", "metrics.rs"}
ROOTS = ("shared", "services")


@dataclass
class CodeMetric:
    name: str
    types: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    sites: list[str] = field(default_factory=list)
    emitted: bool = False  # a counter!/gauge!/histogram! call (not only a describe or const)


@dataclass
class DocMetric:
    name: str
    type: str
    labels: set[str]
    exported_by: str
    line: int


def crate_of(path: Path, repo: Path) -> str:
    parts = path.relative_to(repo).parts
    return "/".join(parts[:2])


def rust_sources(repo: Path):
    for root in ROOTS:
        for p in sorted((repo / root).rglob("*.rs")):
            rel = p.relative_to(repo).parts
            # integration tests, benches, examples and test helpers export nothing in production
            if any(x in ("tests", "benches", "examples", "target") for x in rel) or "test-support" in rel[1]:
                continue
            yield p


def strip_cfg_test(text: str) -> str:
    """Drops `#[cfg(test)] mod ... { ... }` blocks (unit tests), keeping line count."""
    out = text
    for m in list(re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        block = text[m.start():i]
        out = out.replace(block, re.sub(r"[^\n]", " ", block), 1)
    return out


def call_args(text: str, start: int) -> str:
    """The text between the `(` at start-1 and its matching `)`."""
    depth, i = 1, start
    in_str = False
    while i < len(text) and depth:
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        i += 1
    return text[start:i - 1]


def first_arg(args: str) -> str:
    depth = 0
    for i, c in enumerate(args):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            return args[:i].strip()
    return args.strip()


def code_metrics(repo: Path) -> tuple[dict[str, CodeMetric], list[str]]:
    """Returns (metrics by name, errors)."""
    consts: dict[str, dict[str, str]] = {}  # crate -> CONST -> name
    declared: list[tuple[str, str, str]] = []  # (name, site, const)
    texts = {}
    for p in rust_sources(repo):
        text = strip_cfg_test(p.read_text(encoding="utf-8"))
        texts[p] = text
        for m in CONST_RE.finditer(text):
            consts.setdefault(crate_of(p, repo), {})[m.group(1)] = m.group(2)
            if p.name in NAME_MODULES and m.group(2).startswith("fleet_"):
                line = text.count("\n", 0, m.start()) + 1
                declared.append((m.group(2), f"{p.relative_to(repo)}:{line}", m.group(1)))

    errors: list[str] = []
    out: dict[str, CodeMetric] = {}

    def resolve(arg: str, crate: str, site: str):
        lit = re.fullmatch(r'"([^"]+)"', arg)
        if lit:
            return lit.group(1)
        path = re.fullmatch(r"(?:[a-z_][a-z0-9_]*::)*([A-Z][A-Z0-9_]*)", arg)
        if path:
            const = path.group(1)
            for c in (crate, "shared/runtime"):
                if const in consts.get(c, {}):
                    return consts[c][const]
        errors.append(f"{site}: cannot resolve the metric name `{arg}` (use a string literal or a `pub const X: &str` in the crate or in shared/runtime)")
        return None

    for p, text in texts.items():
        crate = crate_of(p, repo)
        for m in MACRO_RE.finditer(text):
            args = call_args(text, m.end())
            line = text.count("\n", 0, m.start()) + 1
            site = f"{p.relative_to(repo)}:{line}"
            name = resolve(first_arg(args), crate, site)
            if name is None:
                continue
            cm = out.setdefault(name, CodeMetric(name))
            cm.types.add(m.group(2))
            cm.sites.append(site)
            if not m.group(1):
                cm.emitted = True
                cm.labels.update(LABEL_RE.findall(args))
    for name, site, _ in declared:
        cm = out.setdefault(name, CodeMetric(name))
        cm.sites.append(site)
    return out, errors


TABLE_ROW = re.compile(r"^\|\s*`(fleet_[a-z0-9_]+)`\s*\|\s*(counter|gauge|histogram)\s*\|([^|]*)\|([^|]*)\|")


def doc_metrics(doc: Path) -> tuple[dict[str, DocMetric], list[str]]:
    metrics: dict[str, DocMetric] = {}
    errors: list[str] = []
    for i, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        m = TABLE_ROW.match(line)
        if not m:
            if re.match(r"^\|\s*`fleet_", line):
                errors.append(f"{doc}:{i}: metric row not in the form | `name` | counter/gauge/histogram | labels | exported by | meaning |")
            continue
        name, typ, labels_cell, by = m.group(1), m.group(2), m.group(3), m.group(4).strip()
        labels = set(re.findall(r"`([a-zA-Z_][a-zA-Z0-9_]*)`", labels_cell))
        if name in metrics:
            errors.append(f"{doc}:{i}: `{name}` is documented twice (also line {metrics[name].line})")
        metrics[name] = DocMetric(name, typ, labels, by, i)
    return metrics, errors


LABEL_ROW = re.compile(r"^\|\s*`([a-z_]+)`\s*\|([^|]*)\|(.*)\|\s*$")


def doc_label_values(doc: Path) -> list[tuple[str, set[str], str, int]]:
    """Rows of the "Label values" table: (label, metric names, values cell, line)."""
    rows = []
    in_section = False
    for i, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("## "):
            in_section = line.strip() == "## Label values"
            continue
        if not in_section:
            continue
        m = LABEL_ROW.match(line)
        if m:
            rows.append((m.group(1), set(re.findall(r"`(fleet_[a-z0-9_]+)`", m.group(2))), m.group(3), i))
    return rows


def exposition_names(name: str, typ: str) -> set[str]:
    """The series names a metric produces in the text exposition."""
    if typ == "histogram":
        return {name + "_bucket", name + "_sum", name + "_count"}
    return {name}


def metric_names_in_promql(expr: str) -> set[str]:
    """fleet_* metric names referenced by a PromQL expression (good enough for our rules)."""
    return set(re.findall(r"\b(fleet_[a-z0-9_]+)\b", expr))


def base_metric(series: str, documented: dict) -> str | None:
    """Maps a series name (maybe _bucket/_sum/_count) to its documented metric."""
    if series in documented:
        return series
    for suf in ("_bucket", "_sum", "_count"):
        if series.endswith(suf) and series[: -len(suf)] in documented and documented[series[: -len(suf)]].type == "histogram":
            return series[: -len(suf)]
    return None


if __name__ == "__main__":
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    ms, errs = code_metrics(repo)
    for n in sorted(ms):
        print(n, sorted(ms[n].types), sorted(ms[n].labels), "emitted" if ms[n].emitted else "NOT EMITTED")
    for e in errs:
        print("ERROR", e)
