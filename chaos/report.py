"""The summary: one rich table on the terminal, the same figures as JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    c = summary["commands"]
    table = Table(title=f"eventfold chaos run (seed {summary['seed']})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("duration", f"{summary['duration_s']} s driven, {summary['total_s']} s in all")
    table.add_row(
        "broker",
        {"apache": "Apache Kafka, 3 nodes", "tansu": "embedded Tansu"}.get(
            summary.get("broker", ""), str(summary.get("broker"))
        ),
    )
    table.add_row("PostgreSQL restarts", "on" if summary["pg_restart"] else "off (--no-pg-restart)")
    table.add_row("commands sent", str(c["sent"]))
    table.add_row(
        "acknowledged", f"{c['acknowledged']} (200: {c['acknowledged_200']}, 202: {c['acknowledged_202']})"
    )
    rk = c["repeated_keys"]
    table.add_row(
        "repeats and conditions",
        f"{rk['replay']} replayed keys, {rk['reuse']} keys reused with another body, "
        f"{c['with_if_match']} with If-Match",
    )
    table.add_row("refused (4xx)", ", ".join(f"{k}: {v}" for k, v in c["refused"].items()) or "0")
    table.add_row("503 answers", f"{c['attempts_503']} attempts, {c['commands_with_503']} commands")
    table.add_row(
        "unknown, then retried", f"{c['unknown_then_retried']} commands ({c['unknown_attempts']} attempts)"
    )
    table.add_row("unresolved", str(c["unresolved"]))
    lat = c["attempt_seconds"]
    table.add_row("attempt latency", f"p50 {lat['p50']} s, p99 {lat['p99']} s, max {lat['max']} s")
    if c["unknown_by_error"]:
        table.add_row(
            "unknown answers by error", ", ".join(f"{k}: {v}" for k, v in c["unknown_by_error"].items())
        )
    table.add_row("faults injected", ", ".join(f"{k}: {v}" for k, v in summary["faults"].items()) or "0")
    if summary["fault_errors"]:
        table.add_row("faults that failed", "; ".join(summary["fault_errors"])[:300])
    exits = summary["unexpected_exits"]
    table.add_row("unexpected exits", f"{len(exits)}" + (f" (first: {exits[0][:200]})" if exits else ""))
    rss = summary.get("rss", {})
    judged = [j for j in rss.get("steady", []) if j["growth_pct"] is not None]
    if rss.get("processes"):
        table.add_row(
            "RSS under load",
            ", ".join(
                f"{j['name']}#{j['incarnation']} {j['warmup_mb']}->{j['end_mb']} MB ({j['growth_pct']:+.1f}%)"
                for j in judged
            )
            + f" (judged {len(judged)} of {len(rss['processes'])} incarnations; "
            f"limit +{rss['growth_limit_pct']:.0f}% after warm-up)",
        )
    transfers = summary.get("transfers") or {}
    table.add_row(
        "transfers by outcome",
        ", ".join(f"{k}: {n}" for k, n in transfers.items()) + f" (of {sum(transfers.values())})",
    )
    if took := summary.get("transfer_seconds"):
        table.add_row(
            "transfer request to end",
            f"p50 {took['p50']:g} s, p99 {took['p99']:g} s, max {took['max']:g} s "
            "(deadline and bound: see chaos/run.py)",
        )
    mails = summary.get("emails") or {}
    if mails:
        table.add_row(
            "welcome emails",
            f"{mails['received']} received for {mails['owed']} accounts opened "
            f"({mails['distinct']} distinct, {mails['duplicates']} duplicates, {mails['unowed']} not owed)",
        )
    if "drain_s" in summary:
        table.add_row("drain after the faults", f"{summary['drain_s']} s")
    table.add_row("events checked", str(summary["events_checked"]))
    table.add_row("streams checked", str(summary["streams_checked"]))
    style = "green" if summary["violations"] == 0 else "bold red"
    table.add_row("violations", f"[{style}]{summary['violations']}[/{style}]")
    console.print(table)
    for check, examples in summary["violation_examples"].items():
        console.print(f"[red]{check}[/red] ({summary['violations_by_check'][check]}):")
        for line in examples:
            console.print(f"  {line}", markup=False)


def write_json(summary: dict[str, Any], directory: Path = RESULTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps({"finished_at": stamp, **summary}, indent=2, default=str) + "\n")
    return path
