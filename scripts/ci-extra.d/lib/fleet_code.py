#!/usr/bin/env python3
"""Facts read from fleet's Rust sources, for the deploy/ and k8s/ checks (stdlib only).

- the FLEET_* environment options each binary accepts (`#[arg(... env = "FLEET_X" ...)]` in its
  crate plus shared/runtime's RuntimeConfig) and their defaults;
- each worker's stage (`pub const STAGE: &str`);
- broker names (mirrors shared/protocol/src/names.rs; the check fails if that file changes shape).
"""

from __future__ import annotations

import re
from pathlib import Path

BINARIES = {
    "fleet-analyzer": "services/analyzer",
    "fleet-summarizer": "services/summarizer",
    "fleet-writer": "services/writer",
    "fleet-coordinator": "services/coordinator",
}
WORKERS = ("fleet-analyzer", "fleet-summarizer", "fleet-writer")
ARG_RE = re.compile(r"#\[arg\((.*?)\)\]\s*(?:///[^\n]*\n\s*)*pub\s+(\w+)", re.S)


def _consts(crate: Path) -> dict[str, str]:
    out = {}
    for p in crate.rglob("src/**/*.rs"):
        for m in re.finditer(r'pub\s+const\s+([A-Z0-9_]+)\s*:\s*&str\s*=\s*"([^"]*)"', p.read_text(encoding="utf-8")):
            out[m.group(1)] = m.group(2)
        for m in re.finditer(r"pub\s+const\s+([A-Z0-9_]+)\s*:\s*(?:u8|u16|u32|u64|usize|i64)\s*=\s*([0-9_]+)\s*;", p.read_text(encoding="utf-8")):
            out[m.group(1)] = m.group(2).replace("_", "")
    return out


def _env_options(crate: Path, consts: dict[str, str]) -> dict[str, str | None]:
    opts: dict[str, str | None] = {}
    for p in sorted((crate / "src").rglob("*.rs")):
        for m in ARG_RE.finditer(p.read_text(encoding="utf-8")):
            attr = m.group(1)
            env = re.search(r'env\s*=\s*"(FLEET_[A-Z0-9_]+)"', attr)
            if not env:
                continue
            d = re.search(r'default_value(?:_t)?\s*=\s*("([^"]*)"|[A-Za-z0-9_:.]+)', attr)
            default = None
            if d:
                if d.group(2) is not None:
                    default = d.group(2)
                else:
                    default = consts.get(d.group(1).split("::")[-1], d.group(1))
            opts[env.group(1)] = default
    return opts


def env_options(repo: Path) -> dict[str, dict[str, str | None]]:
    """binary -> {FLEET_X: default or None}."""
    runtime = repo / "shared/runtime"
    rt = _env_options(runtime, _consts(runtime))
    out = {}
    for binary, crate in BINARIES.items():
        c = repo / crate
        opts = dict(rt)
        opts.update(_env_options(c, {**_consts(runtime), **_consts(c)}))
        out[binary] = opts
    return out


def stages(repo: Path) -> dict[str, str]:
    out = {}
    for binary in WORKERS:
        text = (repo / BINARIES[binary] / "src/lib.rs").read_text(encoding="utf-8")
        m = re.search(r'pub const STAGE: &str = "([a-z_]+)";', text)
        if not m:
            raise SystemExit(f"cannot find `pub const STAGE` in {BINARIES[binary]}/src/lib.rs; update scripts/ci-extra.d/lib/fleet_code.py")
        out[binary] = m.group(1)
    return out


def check_names_source(repo: Path) -> None:
    text = (repo / "shared/protocol/src/names.rs").read_text(encoding="utf-8")
    for needle in ('format!("{}.jobs.{stage}", self.prefix)', 'self.prefix.to_uppercase().replace([\'.\', \'-\'], "_")', 'self.stream("JOBS")'):
        if needle not in text:
            raise SystemExit(f"shared/protocol/src/names.rs no longer contains {needle!r}: update the naming mirror in scripts/ci-extra.d/lib/fleet_code.py")


def jobs_queue(prefix: str, stage: str) -> str:
    return f"{prefix}.jobs.{stage}"


def jobs_stream(prefix: str) -> str:
    return prefix.upper().replace(".", "_").replace("-", "_") + "_JOBS"


def duration_s(s: str) -> float:
    """Seconds of a humantime duration like 25s, 2m, 1h30m, 500ms."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h|d)", s):
        if m.start() != pos:
            raise ValueError(f"not a duration: {s!r}")
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"not a duration: {s!r}")
    return total


if __name__ == "__main__":
    import json
    import sys

    repo = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    print(json.dumps({"env": env_options(repo), "stages": stages(repo)}, indent=1))
