#!/usr/bin/env python3
"""Alert rule tests built from fault-campaign recordings (issue 10, "Alerts"). Stdlib only.

A campaign recording is a directory `<broker>-<scenario>/` with
  series.jsonl  one scrape per line: {"t": secs since scenario start, "job": "fleet-…",
                "instance": "…", "text": "<Prometheus exposition text>"}
                (a failed scrape may say so with "text": null or an "error" field)
  phases.jsonl  {"t": secs, "event": "start"|"submitted"|"fault_start"|"fault_end"|
                "all_terminal"|"finalized"|"end", "fault": name|null}

Subcommands:
  import SRC_DIR...   trim recordings into deploy/prometheus/campaign/<name>/ (series.jsonl.gz,
                      phases.jsonl): only the metric
                      names deploy/prometheus/alerts.yml uses, one scrape per target and grid
                      interval (the scrape the converter would use anyway), so regenerating from
                      the trimmed copy gives the same test.
  generate [--check]  deploy/prometheus/campaign/<name>.test.yml for every trimmed recording
                      whose scenario has a row in expectations.toml, and the timings table in
                      docs/operations.md (--check: fail when a checked-in file differs from
                      what the recordings, the rules and the table give).
  timings             when each expected alert first fired and last fired, per recording.

How samples become promtool series: the grid is the table's `interval` (Prometheus' scrape
and evaluation interval, 15 s in deploy/prometheus/prometheus.yml). At grid time g a target
(job, instance) is up when it has a scrape in (g - interval, g]; its series take the values
of the latest such scrape. A target that was up before and is again later but has no scrape
at g failed that scrape: `up` is 0 and its series get a stale marker, as Prometheus does. A
target whose scrapes stop before the recording ends is gone (its process was replaced by
one on another address, as service discovery would drop it): its series go stale. After
`end` the targets still up hold their last scrape for `hold` (an idle fleet), so resolution
can be observed. Every series gets the job and instance labels of its target.

What each scenario must do to the alerts lives in one table, expectations.toml:
  fires     alerts that must fire within `fire_within` of the first fault_start
            (optionally with given labels, or their own `within`) and be resolved `resolve_within` after the last
            fault_end;
  may_fire  alerts that may fire as a consequence (dead letters of a poison item, ...);
every other alert must stay silent for the whole recording, and no alert may fire in the
healthy phase before the first fault.
Firing is asserted on the ALERTS series (promql_expr_test): alert_rule_test compares the
rendered annotations exactly, which embed recorded values ($value) that only an evaluation
knows. Silence is asserted with alert_rule_test (exp_alerts: []) and on ALERTS.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import math
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

CAMPAIGN = Path("deploy/prometheus/campaign")
RULES = Path("deploy/prometheus/alerts.yml")
TABLE = CAMPAIGN / "expectations.toml"
BROKERS = ("rabbitmq", "nats")

# ---------------------------------------------------------------------------------------------
# Durations


def parse_duration(s: str | int | float) -> int:
    """'2m30s' / '90s' / 90 -> seconds."""
    if isinstance(s, (int, float)):
        return int(s)
    total, n = 0, ""
    units = {"h": 3600, "m": 60, "s": 1}
    for ch in s.strip():
        if ch.isdigit():
            n += ch
        elif ch in units and n:
            total += int(n) * units[ch]
            n = ""
        else:
            raise ValueError(f"bad duration {s!r}")
    if n:
        raise ValueError(f"bad duration {s!r} (a number without a unit)")
    return total


def fmt_duration(secs: int) -> str:
    """Seconds -> promtool duration ('3m15s', '0s')."""
    if secs == 0:
        return "0s"
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            out += f"{secs // size}{unit}"
            secs %= size
    return out


# ---------------------------------------------------------------------------------------------
# Exposition text


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_labels(body: str) -> tuple[tuple[str, str], ...]:
    out, pos = [], 0
    while pos < len(body):
        m = _LABEL.match(body, pos)
        if not m:
            if body[pos:].strip(" ,"):
                raise ValueError(f"bad label set {{{body}}}")
            break
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    return tuple(out)


def parse_exposition(text: str, keep: set[str]) -> dict[tuple, float]:
    """{(name, labels...): value} for the samples whose metric name is in `keep`."""
    out: dict[tuple, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in keep:
            continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        if math.isnan(value):
            continue
        out[(m.group(1), *parse_labels(m.group(3) or ""))] = value
    return out


def render_sample(key: tuple, value: float) -> str:
    name, labels = key[0], key[1:]
    body = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{name}{{{body}}} {fmt_value(value)}" if labels else f"{name} {fmt_value(value)}"


def fmt_value(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def rule_metric_names(rules_text: str) -> set[str]:
    """Metric names the rule expressions (and, harmlessly, their texts) mention, plus `up`."""
    return set(re.findall(r"\bfleet_[a-z0-9_]+\b", rules_text)) | {"up"}


def alert_names(rules_text: str) -> list[str]:
    return re.findall(r"^\s*-\s*alert:\s*(\S+)\s*$", rules_text, re.M)


# ---------------------------------------------------------------------------------------------
# Recordings


@dataclass
class Scrape:
    t: float
    samples: dict[tuple, float] | None  # None: a failed scrape


@dataclass
class Recording:
    name: str
    targets: dict[tuple[str, str], list[Scrape]] = field(default_factory=dict)
    phases: list[dict] = field(default_factory=list)

    def phase(self, event: str, last: bool = False) -> float | None:
        ts = [p["t"] for p in self.phases if p.get("event") == event]
        if not ts:
            return None
        return max(ts) if last else min(ts)

    @property
    def end(self) -> float:
        e = self.phase("end", last=True)
        if e is not None:
            return e
        return max((s.t for ss in self.targets.values() for s in ss), default=0.0)


def _open(path: Path):
    """`path`, or its gzipped copy `path.gz` (the checked-in trimmed recordings)."""
    if path.exists():
        return path.open(encoding="utf-8")
    return gzip.open(path.with_name(path.name + ".gz"), "rt", encoding="utf-8")


def load_recording(d: Path, keep: set[str]) -> Recording:
    rec = Recording(d.name)
    with _open(d / "series.jsonl") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                o = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{d}/series.jsonl:{n}: {e}") from e
            text = o.get("text")
            failed = text is None or bool(o.get("error"))
            samples = None if failed else parse_exposition(text, keep)
            rec.targets.setdefault((o["job"], o["instance"]), []).append(Scrape(float(o["t"]), samples))
    for ss in rec.targets.values():
        ss.sort(key=lambda s: s.t)
    with _open(d / "phases.jsonl") as f:
        rec.phases = [json.loads(line) for line in f if line.strip()]
    rec.phases.sort(key=lambda p: p["t"])
    return rec


def pick(scrapes: list[Scrape], g: float, interval: int) -> Scrape | None:
    """The latest scrape in (g - interval, g], or None."""
    best = None
    for s in scrapes:
        if s.t > g:
            break
        if s.t > g - interval:
            best = s
    return best


def grid(rec: Recording, interval: int, hold: int) -> list[int]:
    last = int(math.ceil(rec.end / interval)) * interval + hold
    return list(range(0, last + 1, interval))


def sample_grid(rec: Recording, interval: int, hold: int):
    """(grid, {series key: [value | None (missing) | 'stale']}) with job/instance labels added."""
    times = grid(rec, interval, hold)
    end = rec.end
    series: dict[tuple, list] = {}
    for (job, instance), scrapes in sorted(rec.targets.items()):
        ok = [s for s in scrapes if s.samples is not None]
        if not ok:
            continue
        first, last = ok[0].t, ok[-1].t
        alive_at_end = last > end - interval
        slopes = idle_slopes(ok, rec.phase("fault_end", last=True) or 0.0)
        up_key = ("up", ("instance", instance), ("job", job))
        cols: list[dict[tuple, float] | None | str] = []  # per grid time: samples, None absent, 'down'
        for g in times:
            if g < first:
                cols.append(None)
                continue
            if g > end and alive_at_end:
                cols.append(hold_samples(ok[-1], slopes, g))  # the idle fleet after the run
                continue
            s = pick(scrapes, g, interval)
            if s is not None and s.samples is not None:
                cols.append(s.samples)
            elif g <= last + interval:
                cols.append("down")  # failed scrape between two good ones
            else:
                cols.append(None)  # target gone
        keys = sorted({k for c in cols if isinstance(c, dict) for k in c})
        for k in keys:
            labels = dict(k[1:])
            labels["job"], labels["instance"] = job, instance
            full = (k[0], *sorted(labels.items()))
            vals = []
            for c in cols:
                vals.append(c.get(k) if isinstance(c, dict) else None)
            series[full] = vals
        series[up_key] = [1.0 if isinstance(c, dict) else (0.0 if c == "down" else None) for c in cols]
    # A value followed by absence is a stale marker (Prometheus marks series that disappear).
    for vals in series.values():
        for i in range(1, len(vals)):
            if vals[i] is None and isinstance(vals[i - 1], float):
                vals[i] = "stale"
    return times, series


COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


def idle_slopes(ok: list[Scrape], recovered: float) -> dict[tuple, float]:
    """Per counter series, its rate over the target's last minute after the last fault ended
    (`recovered`); nothing grows when that leaves fewer than two scrapes."""
    last = ok[-1]
    since = max(recovered, last.t - 60)
    before = next((s for s in ok if s.t >= since), last)
    if before is last or last.samples is None or before.samples is None:
        return {}
    dt = last.t - before.t
    out = {}
    for k, v in last.samples.items():
        if k[0].endswith(COUNTER_SUFFIXES) and k in before.samples:
            out[k] = max(0.0, (v - before.samples[k]) / dt)
    return out


def hold_samples(last: Scrape, slopes: dict[tuple, float], g: float) -> dict[tuple, float]:
    """The idle fleet after `end`: gauges keep their last value, counters keep their last
    minute's rate (work has stopped, so only clocks such as heartbeats and sweeps advance)."""
    assert last.samples is not None
    return {k: round(v + slopes.get(k, 0.0) * (g - last.t)) if k in slopes and slopes[k] else v for k, v in last.samples.items()}


def encode_values(vals: list) -> str:
    """promtool's expanding notation: runs 'a+bxN', '_xN' for missing, 'stale'."""
    out, i, n = [], 0, len(vals)
    while i < n:
        v = vals[i]
        if v is None:
            j = i
            while j + 1 < n and vals[j + 1] is None:
                j += 1
            out.append("_" if j == i else f"_x{j - i + 1}")  # '_xN' is N missing values ('axN' is N+1 values)
            i = j + 1
            continue
        if v == "stale":
            out.append("stale")
            i += 1
            continue
        j = i
        step = None
        while j + 1 < n and isinstance(vals[j + 1], float):
            d = vals[j + 1] - vals[j]
            if step is None:
                step = d
            elif d != step:
                break
            j += 1
        if step and j - i < 2:
            j = i  # a two-value ramp reads better as two values
        if j == i:
            out.append(fmt_value(v))
        else:
            step = step or 0.0
            if step == 0:
                out.append(f"{fmt_value(v)}x{j - i}")
            elif step > 0:
                out.append(f"{fmt_value(v)}+{fmt_value(step)}x{j - i}")
            else:
                out.append(f"{fmt_value(v)}-{fmt_value(-step)}x{j - i}")
        i = j + 1
    # Trailing absence adds nothing.
    while out and out[-1].startswith("_"):
        out.pop()
    return " ".join(out)


def series_name(key: tuple) -> str:
    name, labels = key[0], key[1:]
    body = ",".join(f"{k}={json.dumps(v)}" for k, v in labels)
    return f"{name}{{{body}}}"


# ---------------------------------------------------------------------------------------------
# The table


@dataclass
class Expect:
    scenario: str
    fires: list[dict]  # {"alert": name, "labels": {...}}
    may_fire: list[str]
    interval: int
    fire_within: int
    resolve_within: int
    hold: int
    note: str


def load_table(repo: Path) -> dict[str, Expect]:
    raw = tomllib.loads((repo / TABLE).read_text(encoding="utf-8"))
    d = raw.get("defaults", {})
    out = {}
    for name, row in raw.get("scenario", {}).items():
        merged = {**d, **row}
        fires = []
        for f in merged.get("fires", []):
            if isinstance(f, str):
                f = {"alert": f}
            within = parse_duration(f.get("within", merged["fire_within"]))
            fires.append({"alert": f["alert"], "labels": f.get("labels", {}), "within": within})
        out[name] = Expect(
            scenario=name,
            fires=fires,
            may_fire=list(merged.get("may_fire", [])),
            interval=parse_duration(merged.get("interval", "15s")),
            fire_within=parse_duration(merged["fire_within"]),
            resolve_within=parse_duration(merged["resolve_within"]),
            hold=parse_duration(merged.get("hold", "10m")),
            note=merged.get("note", ""),
        )
    return out


def scenario_of(rec_name: str) -> str:
    for b in BROKERS:
        if rec_name.startswith(b + "-"):
            return rec_name[len(b) + 1 :]
    return rec_name


# ---------------------------------------------------------------------------------------------
# The generated test


def ceil_to(t: float, interval: int) -> int:
    return int(math.ceil(t / interval)) * interval


def floor_to(t: float, interval: int) -> int:
    return int(math.floor(t / interval)) * interval


@dataclass
class Window:
    fault_start: float  # as recorded
    fault_end: float  # as recorded
    final: int  # last grid time


def window(rec: Recording, ex: Expect, times: list[int]) -> Window:
    fs = rec.phase("fault_start")
    fe = rec.phase("fault_end", last=True)
    if fs is None:
        raise SystemExit(f"{rec.name}: phases.jsonl has no fault_start")
    if fe is None:
        fe = rec.end
    return Window(fs, fe, times[-1])


def q(s: str) -> str:
    """A YAML single-quoted scalar."""
    return "'" + s.replace("'", "''") + "'"


def firing_selector(alert: str, labels: dict) -> str:
    extra = "".join(f",{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return f'ALERTS{{alertname="{alert}",alertstate="firing"{extra}}}'


def render_test(rec: Recording, ex: Expect, alerts: list[str], keep: set[str], timings: dict | None) -> str:
    times, series = sample_grid(rec, ex.interval, ex.hold)
    w = window(rec, ex, times)
    i = ex.interval
    healthy_end = floor_to(w.fault_start, i)  # the last evaluation before the fault
    resolved_by = ceil_to(w.fault_end + ex.resolve_within, i)
    if resolved_by > w.final:
        raise SystemExit(f"{rec.name}: resolve_within reaches past the recording plus hold ({fmt_duration(resolved_by)} > {fmt_duration(w.final)}); raise hold")
    expected = [f["alert"] for f in ex.fires]
    unknown = sorted({*expected, *ex.may_fire} - set(alerts))
    if unknown:
        raise SystemExit(f"expectations.toml row {ex.scenario}: unknown alerts {unknown}")
    allowed = sorted({*expected, *ex.may_fire})
    lines = [
        f"# GENERATED by scripts/ci-extra.d/lib/campaign_alerts.py from the campaign recording",
        f"# deploy/prometheus/campaign/{rec.name}/ and the row [scenario.{ex.scenario}] of",
        "# deploy/prometheus/campaign/expectations.toml; do not edit. Regenerate:",
        "#   python3 scripts/ci-extra.d/lib/campaign_alerts.py generate   (needs promtool)",
        f"# Phases (s since start): " + ", ".join(f"{p['event']}{'(' + p['fault'] + ')' if p.get('fault') else ''}={p['t']:.0f}" for p in rec.phases),
        f"# Grid {ex.interval}s; faults {w.fault_start:.0f}s..{w.fault_end:.0f}s; healthy until {healthy_end}s; resolved by {resolved_by}s; idle to {w.final}s.",
    ]
    if ex.note:
        lines.append(f"# {ex.note}")
    if timings:
        lines.append("# Measured (promtool evaluation, first firing / first evaluation no longer firing):")
        for a, (first, last) in timings.items():
            if first is None:
                lines.append(f"#   {a}: never fired")
            else:
                res = last + ex.interval  # the first evaluation where it no longer fires
                lines.append(f"#   {a}: fired at +{first - w.fault_start:.0f}s, resolved at +{res - w.fault_end:.0f}s after fault_end")
    lines += [
        "rule_files:",
        "  - ../alerts.yml",
        f"evaluation_interval: {ex.interval}s",
        "tests:",
        f"  - interval: {ex.interval}s",
        "    input_series:",
    ]
    for key in sorted(series):
        vals = encode_values(series[key])
        if not vals:
            continue
        lines.append(f"      - series: {q(series_name(key))}")
        lines.append(f"        values: {q(vals)}")
    lines.append("    alert_rule_test:")
    # Healthy phase: nothing fires up to the fault.
    for a in alerts:
        lines += [f"      - eval_time: {fmt_duration(healthy_end)}", f"        alertname: {a}", "        exp_alerts: []"]
    # After the fault: the expected alerts are resolved again.
    for a in expected:
        lines += [f"      - eval_time: {fmt_duration(resolved_by)}", f"        alertname: {a}", "        exp_alerts: []"]
    lines.append("    promql_expr_test:")
    # No alert fired at any evaluation of the healthy phase.
    healthy_expr = 'group by (alertname) (max_over_time(ALERTS{alertstate="firing"}[' + str(healthy_end + i) + "s]))"
    lines += [
        f"      - expr: {q(healthy_expr)}",
        f"        eval_time: {fmt_duration(healthy_end)}",
        "        exp_samples: []",
    ]
    # Each expected alert fired within its bound after the fault started.
    for f in ex.fires:
        fire_by = floor_to(w.fault_start + f["within"], i)
        sel = firing_selector(f["alert"], f["labels"])
        by = ", ".join(["alertname", *sorted(f["labels"])])
        exp = ",".join([f'alertname="{f["alert"]}"', *(f"{k}={json.dumps(v)}" for k, v in sorted(f["labels"].items()))])
        lines += [
            f"      - expr: {q(f'group by ({by}) (max_over_time({sel}[{fire_by - healthy_end}s]))')}",
            f"        eval_time: {fmt_duration(fire_by)}",
            "        exp_samples:",
            f"          - labels: {q('{' + exp + '}')}",
            "            value: 1",
        ]
    # Nothing outside the table's row fired at any evaluation.
    others = "|".join(allowed) if allowed else "^$"
    noise_expr = 'group by (alertname) (max_over_time(ALERTS{alertstate="firing",alertname!~"' + others + '"}[' + str(w.final + i) + "s]))"
    lines += [
        f"      - expr: {q(noise_expr)}",
        f"        eval_time: {fmt_duration(w.final)}",
        "        exp_samples: []",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Timings (promtool does the evaluating)


def measure(repo: Path, promtool: str, rec: Recording, ex: Expect, alerts: list[str], keep: set[str], names: list[str]) -> dict:
    """{alert: (first firing eval time, last firing eval time) | (None, None)} via promtool."""
    body = render_test(rec, ex, alerts, keep, None)
    head, _, _ = body.partition("    alert_rule_test:")
    times = grid(rec, ex.interval, ex.hold)
    final = times[-1]
    probe = [head.rstrip("\n"), "    promql_expr_test:"]
    for a in names:
        for fn in ("min", "max"):
            expr = f'{fn}({fn}_over_time(timestamp(ALERTS{{alertname="{a}",alertstate="firing"}})[{final + ex.interval}s:{ex.interval}s]))'
            probe += [f"      - expr: {q(expr)}", f"        eval_time: {fmt_duration(final)}", "        exp_samples: []"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "campaign"
        d.mkdir()
        (Path(tmp) / "alerts.yml").write_text((repo / RULES).read_text(encoding="utf-8"), encoding="utf-8")
        (d / "probe.test.yml").write_text("\n".join(probe) + "\n", encoding="utf-8")
        r = subprocess.run([promtool, "test", "rules", str(d / "probe.test.yml")], capture_output=True, text=True)
    got = re.findall(r'expr: "(min|max)\(\1_over_time\(timestamp\(ALERTS\{alertname=\\"(\w+)\\".*?\n\s*exp: nil\n\s*got: \{\} (\S+)', r.stdout + r.stderr)
    out = {a: [None, None] for a in names}
    for fn, a, v in got:
        out[a][0 if fn == "min" else 1] = float(v)
    if r.returncode == 0 and any(v[0] is None for v in out.values()):
        pass  # nothing fired at all: every probe passed with no samples
    elif "FAILED" not in (r.stdout + r.stderr) and r.returncode != 0:
        raise SystemExit(f"promtool failed on the probe of {rec.name}:\n{r.stdout}{r.stderr}")
    return {a: tuple(v) for a, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_import(repo: Path, srcs: list[str], keep: set[str], table: dict[str, Expect]) -> int:
    for src in map(Path, srcs):
        rec = load_recording(src, keep)
        ex = table.get(scenario_of(rec.name))
        interval = ex.interval if ex else 15
        dst = repo / CAMPAIGN / rec.name
        dst.mkdir(parents=True, exist_ok=True)
        n = 0
        # mtime=0: the same recording gives the same bytes.
        with gzip.GzipFile(dst / "series.jsonl.gz", "wb", mtime=0) as raw, open_text(raw) as f:
            for (job, instance), scrapes in sorted(rec.targets.items()):
                used: list[Scrape] = []
                for g in grid(rec, interval, 0):
                    s = pick(scrapes, g, interval)
                    if s is not None and (not used or used[-1] is not s):
                        used.append(s)
                for s in used:
                    text = None if s.samples is None else "\n".join(render_sample(k, v) for k, v in sorted(s.samples.items()))
                    f.write(json.dumps({"t": round(s.t, 3), "job": job, "instance": instance, "text": text}) + "\n")
                    n += 1
        with (dst / "phases.jsonl").open("w", encoding="utf-8") as f:
            for p in rec.phases:
                f.write(json.dumps(p) + "\n")
        size = (dst / "series.jsonl.gz").stat().st_size
        print(f"{src} -> {dst.relative_to(repo)}: {n} scrapes, {size // 1024} KiB")
    return 0


def open_text(raw):
    import io

    return io.TextIOWrapper(raw, encoding="utf-8")


def recordings(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / CAMPAIGN).iterdir() if p.is_dir() and (p / "series.jsonl.gz").exists())


def cmd_generate(repo: Path, keep: set[str], alerts: list[str], table: dict[str, Expect], check: bool, promtool: str) -> int:
    stale, made = [], 0
    for d in recordings(repo):
        ex = table.get(scenario_of(d.name))
        if ex is None:
            print(f"{d.name}: no row [scenario.{scenario_of(d.name)}] in {TABLE}", file=sys.stderr)
            return 1
        rec = load_recording(d, keep)
        timings = measure(repo, promtool, rec, ex, alerts, keep, [f["alert"] for f in ex.fires])
        text = render_test(rec, ex, alerts, keep, timings)
        out = repo / CAMPAIGN / f"{d.name}.test.yml"
        if check:
            if not out.exists() or out.read_text(encoding="utf-8") != text:
                stale.append(str(out.relative_to(repo)))
        else:
            out.write_text(text, encoding="utf-8")
            made += 1
    doc = doc_with_timings(repo, timings_table(repo, keep, alerts, table, promtool))
    if check and (repo / DOC).read_text(encoding="utf-8") != doc:
        stale.append(f"{DOC} (the campaign timings table)")
    elif not check:
        (repo / DOC).write_text(doc, encoding="utf-8")
    if check:
        tests = {p.name for p in (repo / CAMPAIGN).glob("*.test.yml")}
        orphans = tests - {f"{d.name}.test.yml" for d in recordings(repo)}
        for o in sorted(orphans):
            stale.append(f"{CAMPAIGN}/{o} (no recording)")
        for s in stale:
            print(f"  - stale: {s}", file=sys.stderr)
        if stale:
            print("campaign alert tests are stale: run scripts/ci-extra.d/lib/campaign_alerts.py generate", file=sys.stderr)
            return 1
        print(f"campaign alert tests up to date ({len(recordings(repo))} recordings)")
        return 0
    print(f"wrote {made} campaign alert tests")
    return 0


def severities(rules_text: str) -> dict[str, str]:
    out, current = {}, None
    for line in rules_text.splitlines():
        m = re.match(r"^\s*-\s*alert:\s*(\S+)", line)
        if m:
            current = m.group(1)
        m = re.match(r"^\s*severity:\s*(\S+)", line)
        if m and current:
            out[current] = m.group(1)
    return out


def timings_table(repo: Path, keep: set[str], alerts: list[str], table: dict[str, Expect], promtool: str) -> list[str]:
    """Markdown rows: when each expected alert fired and resolved, per scenario and broker."""
    sev = severities((repo / RULES).read_text(encoding="utf-8"))
    rows = [
        "| scenario | broker | fault (s after start) | alert (severity) | fires after the fault started | resolved after the fault ended |",
        "|---|---|---|---|---|---|",
    ]
    order = list(table)
    for d in sorted(recordings(repo), key=lambda d: (order.index(scenario_of(d.name)) if scenario_of(d.name) in order else len(order), d.name)):
        ex = table.get(scenario_of(d.name))
        if ex is None:
            continue
        rec = load_recording(d, keep)
        w = window(rec, ex, grid(rec, ex.interval, ex.hold))
        m = measure(repo, promtool, rec, ex, alerts, keep, [f["alert"] for f in ex.fires])
        broker = d.name[: len(d.name) - len(ex.scenario) - 1] or "?"
        for a, (first, last) in m.items():
            head = f"| {ex.scenario} | {broker} | {w.fault_start:.0f}–{w.fault_end:.0f} | {a} ({sev.get(a, '?')}) |"
            if first is None:
                rows.append(f"{head} never | – |")
            else:
                rows.append(f"{head} {first - w.fault_start:.0f} s | {last + ex.interval - w.fault_end:.0f} s |")
    return rows


DOC = Path("docs/operations.md")
DOC_BEGIN = "<!-- campaign-timings: generated by campaign_alerts.py generate -->"
DOC_END = "<!-- /campaign-timings -->"


def doc_with_timings(repo: Path, rows: list[str]) -> str:
    text = (repo / DOC).read_text(encoding="utf-8")
    if DOC_BEGIN not in text or DOC_END not in text:
        raise SystemExit(f"{DOC}: the markers {DOC_BEGIN} ... {DOC_END} are missing")
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    return head + DOC_BEGIN + "\n" + "\n".join(rows) + "\n" + DOC_END + tail


def cmd_timings(repo: Path, keep: set[str], alerts: list[str], table: dict[str, Expect], promtool: str) -> int:
    print("\n".join(timings_table(repo, keep, alerts, table, promtool)))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=".", help="repository root (default: .)")
    ap.add_argument("--promtool", help="promtool binary (default: $PROMTOOL, promtool on PATH, or target/tools' copy)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="trim recordings into deploy/prometheus/campaign/")
    imp.add_argument("src", nargs="+")
    gen = sub.add_parser("generate", help="write (or --check) the campaign tests")
    gen.add_argument("--check", action="store_true")
    sub.add_parser("timings", help="print when each expected alert fired and resolved")
    a = ap.parse_args()
    repo = Path(a.repo).resolve()
    rules_text = (repo / RULES).read_text(encoding="utf-8")
    keep = rule_metric_names(rules_text)
    alerts = alert_names(rules_text)
    table = load_table(repo)
    if a.cmd == "import":
        return cmd_import(repo, a.src, keep, table)
    promtool = a.promtool or os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool and (repo / "target/tools/prometheus/usr/bin/promtool").exists():
        promtool = str(repo / "target/tools/prometheus/usr/bin/promtool")
    if not promtool:
        ap.error("promtool not found (--promtool, $PROMTOOL, PATH; scripts/ci-extra.d/20-prometheus-rules.sh installs one)")
    if a.cmd == "generate":
        return cmd_generate(repo, keep, alerts, table, a.check, promtool)
    return cmd_timings(repo, keep, alerts, table, promtool)


if __name__ == "__main__":
    sys.exit(main())
