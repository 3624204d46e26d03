"""Figures, their statistics, the machine they ran on, and the written report.

A figure is the median of its runs, stored beside `<name>_min`, `<name>_max`
and `<name>_runs` (the raw values), so `raw.produce_msgs_per_s` resolves to a
number. A figure that could not be measured is `null` and its section carries
an `error`.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"
# Result files of a run on another broker carry its kind in their names.
REFERENCE_BROKER = "apache"

# For context only: printed beside the figures, never asserted.
TARGETS: dict[str, str] = {
    "ratios.command_vs_minimal": ">= 1.0",
    "ratios.command_p99_vs_minimal": "<= 1.0",
    "ratios.hot_vs_minimal": ">= 0.8",
    "ratios.batch_vs_minimal": ">= 10",
    "ratios.projector_vs_raw": ">= 0.5",
    "ratios.projector_vs_peer": ">= 1.5",
    "ratios.replay_vs_raw": ">= 0.6",
    "replay.seconds_per_1m_events": "<= 20",
    "replay.peak_rss_mb": "< 300",
    "e2e.light_p50_ms": "<= 20",
    "e2e.light_p99_ms": "<= 100",
    "e2e.sustainable_p99_ms": "<= 250",
    "ratios.get_vs_minimal": ">= 0.8",
    "ratios.views_p99_vs_minimal": "<= 1.5",
    "ratios.page_vs_minimal": ">= 0.5",
    "live.p99_ms_1000": "<= 250",
    "live.kb_per_idle_subscriber_1000": "< 50",
    "live.kb_per_idle_subscriber_5000": "< 50",
}


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "runs": [round(v, 3) for v in values],
    }


class Report:
    def __init__(self, mode: str) -> None:
        self.data: dict[str, Any] = {"mode": mode, "machine": machine_info()}
        self.order: list[tuple[str, str, str]] = []

    def section(self, name: str) -> dict[str, Any]:
        sec: dict[str, Any] = self.data.setdefault(name, {})
        return sec

    def figure(self, section: str, name: str, values: list[float], unit: str = "") -> float | None:
        """Store the median of `values` with min, max and runs; returns the median."""
        s = stats([v for v in values if v is not None])
        sec = self.section(section)
        sec[name] = _round(s["median"])
        sec[f"{name}_min"] = _round(s["min"])
        sec[f"{name}_max"] = _round(s["max"])
        sec[f"{name}_runs"] = s["runs"]
        if (section, name, unit) not in self.order:
            self.order.append((section, name, unit))
        median: float | None = s["median"]
        return median

    def value(self, section: str, name: str, value: float | None, unit: str = "") -> None:
        """A single derived value (a ratio), shown in the table without min/max."""
        self.section(section)[name] = _round(value)
        if (section, name, unit) not in self.order:
            self.order.append((section, name, unit))

    def note(self, section: str, key: str, value: Any) -> None:
        self.section(section)[key] = value

    def error(self, section: str, message: str) -> None:
        sec = self.section(section)
        sec["error"] = (sec.get("error", "") + "\n" + message).strip()[-4000:]

    def get(self, dotted: str) -> float | None:
        section, name = dotted.split(".", 1)
        v = self.data.get(section, {}).get(name)
        return v if isinstance(v, int | float) else None

    # -- output ------------------------------------------------------------

    def broker_line(self) -> str:
        """`Apache Kafka 4.1.2, 3 nodes`: the broker the figures were measured on."""
        b = self.data.get("broker") or {}
        if "name" not in b:
            return str(b.get("kind", "unknown broker"))
        nodes = b.get("nodes")
        version = b.get("version") or "(version unknown)"
        return f"{b['name']} {version}, {nodes} node{'s' if nodes != 1 else ''}"

    def write(self, only: str | None = None) -> list[Path]:
        """`<date>.json` (`-quick`) and `latest.json`; a partial run (`only`) writes its own file.

        Apache Kafka is the reference broker; a run on another one has its kind
        in every name (`<date>-quick-tansu.json`, `latest-tansu.json`), so it
        never replaces the reference figures.
        """
        RESULTS.mkdir(parents=True, exist_ok=True)
        today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        name = f"{today}-quick" if self.data["mode"] == "quick" else today
        kind = (self.data.get("broker") or {}).get("kind", "apache")
        suffix = "" if kind == REFERENCE_BROKER else f"-{kind}"
        name += suffix
        body = orjson.dumps(self.data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        if only:
            # Some phases only: never replace the results of a whole run.
            path = RESULTS / f"{name}-only-{only}.json"
            path.write_bytes(body + b"\n")
            return [path]
        paths = [RESULTS / f"{name}.json", RESULTS / f"latest{suffix}.json"]
        for p in paths:
            p.write_bytes(body + b"\n")
        return paths

    def table(self) -> Table:
        t = Table(
            title=f"eventfold benchmark ({self.data['mode']}) on {self.broker_line()}", title_justify="left"
        )
        for col, just in (
            ("figure", "left"),
            ("median", "right"),
            ("min", "right"),
            ("max", "right"),
            ("runs", "right"),
            ("target", "left"),
        ):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for section, name, unit in self.order:
            sec = self.data.get(section, {})
            med = sec.get(name)
            runs = sec.get(f"{name}_runs")
            key = f"{section}.{name}"
            t.add_row(
                key + (f" ({unit})" if unit else ""),
                _fmt(med),
                _fmt(sec.get(f"{name}_min")) if runs is not None else "",
                _fmt(sec.get(f"{name}_max")) if runs is not None else "",
                str(len(runs)) if runs is not None else "",
                TARGETS.get(key, ""),
            )
        return t

    def rss_table(self) -> Table | None:
        """Each service process's RSS (first, peak, last sample) and its steady-window verdicts."""
        rss = self.data.get("rss")
        if not rss or not rss.get("processes"):
            return None
        t = Table(
            title=f"RSS per service process (MB, sampled every {rss['interval_s']} s; a steady window "
            f"may grow <= {rss['growth_limit_pct']:.0f}% from after warm-up to its end)",
            title_justify="left",
        )
        for col, just in (("process", "left"), ("peak", "right"), ("last", "right"), ("steady", "left")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        verdicts: dict[tuple[str, int], list[str]] = {}
        for j in rss["steady"]:
            text = (
                f"{j['label']}: {j['warmup_mb']} -> {j['end_mb']} ({j['growth_pct']:+.1f}%) {j['verdict']}"
                if j["growth_pct"] is not None
                else f"{j['label']}: {j['verdict']}"
            )
            if j["verdict"] == "GREW":
                text = f"[bold red]{text}[/bold red]"
            verdicts.setdefault((j["name"], j["incarnation"]), []).append(text)
        for p in rss["processes"]:
            t.add_row(
                f"{p['name']} #{p['incarnation']}",
                _fmt(p["peak_mb"]),
                _fmt(p["last_mb"]),
                "; ".join(verdicts.get((p["name"], p["incarnation"]), [])),
            )
        return t

    def memory_failures(self) -> list[str]:
        """One sentence per service process whose RSS grew over a steady window; a failed run."""
        grew: list[str] = self.data.get("rss", {}).get("grew", [])
        return grew

    def print(self, console: Console) -> None:
        console.print(self.table())
        if (rss := self.rss_table()) is not None:
            console.print(rss)
        for section, sec in self.data.items():
            if not isinstance(sec, dict):
                continue
            for key, value in sec.items():
                if key == "partial" or key.endswith("_note"):
                    console.print(f"[cyan]{section}[/cyan]: {escape(str(value))}")
            if sec.get("error"):
                first = str(sec["error"]).splitlines()[0]
                console.print(f"[yellow]{section}[/yellow]: not measured or partial: {escape(first[:300])}")


def _round(v: float | None) -> float | None:
    if v is None:
        return None
    return round(v, 3) if abs(v) < 100 else round(v, 1)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_mb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "memory_mb": mem_mb,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
    }
