#!/usr/bin/env python3
"""Generates k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yml (one source of truth).

  gen_prometheusrule.py REPO            print the PrometheusRule
  gen_prometheusrule.py REPO --write    rewrite k8s/base/prometheusrule.yaml
  gen_prometheusrule.py REPO --check    fail when k8s/base/prometheusrule.yaml is stale
Needs PyYAML (scripts/ci-extra.d/lib/tools.sh creates a venv with it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by scripts/ci-extra.d/lib/gen_prometheusrule.py;
# do not edit. Regenerate: target/tools/venv/bin/python scripts/ci-extra.d/lib/gen_prometheusrule.py . --write
# (CI fails when this file is stale: scripts/ci-extra.d/30-k8s.sh).
"""


class Literal(str):
    pass


def _literal(dumper, data):
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")


yaml.SafeDumper.add_representer(Literal, _literal)


def render(repo: Path) -> str:
    rules = yaml.safe_load((repo / "deploy/prometheus/alerts.yml").read_text(encoding="utf-8"))
    for g in rules["groups"]:
        for r in g["rules"]:
            if "\n" in r["expr"]:
                r["expr"] = Literal(r["expr"])
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "fleet",
            "labels": {"app.kubernetes.io/part-of": "fleet", "role": "alert-rules"},
        },
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.safe_dump(obj, sort_keys=False, width=4096, allow_unicode=True)


def main() -> int:
    repo = Path(sys.argv[1]).resolve()
    target = repo / "k8s/base/prometheusrule.yaml"
    text = render(repo)
    mode = sys.argv[2] if len(sys.argv) > 2 else ""
    if mode == "--write":
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target.relative_to(repo)}")
    elif mode == "--check":
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            print(
                "k8s/base/prometheusrule.yaml is stale: deploy/prometheus/alerts.yml changed. Regenerate it with\n"
                "  target/tools/venv/bin/python scripts/ci-extra.d/lib/gen_prometheusrule.py . --write",
                file=sys.stderr,
            )
            return 1
        print("k8s/base/prometheusrule.yaml is up to date with deploy/prometheus/alerts.yml")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
