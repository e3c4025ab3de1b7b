"""rich renderings for the CLI: plan, progress with ETA, summary tables."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from harness import report

_STATUS_STYLE = {"ok": "green", "failed": "bold red", "skipped": "yellow", "pending": "dim",
                 "running": "cyan"}


def _console() -> Console:
    return Console(file=sys.stdout, width=200 if not sys.stdout.isatty() else None)


def print_plan(m, cells: list[dict], availability: dict) -> None:
    con = _console()
    table = Table(title=f"{m.name}: {len(cells)} cells")
    for col in ("#", "model", "backend", "precision", "batch", "imgsz", "device", "nms", "plan"):
        table.add_column(col)
    for i, c in enumerate(cells):
        plan = f"[yellow]skip: {c['skip_reason']}[/]" if c["skip_reason"] else "run"
        table.add_row(str(i), c["model"], c["backend"], c["precision"], str(c["batch"]),
                      str(c["imgsz"]), c["device"], c["nms"], plan)
    con.print(table)
    rotated = sorted({c["model"] for c in cells if c.get("box_type") == "rotated"})
    if rotated:
        con.print(f"rotated boxes (scored on rotated IoU, aligned by rotated IoU): {', '.join(rotated)}",
                  markup=False, highlight=False)
    avail = ", ".join(f"{n} ({'available' if a['available'] else 'unavailable: ' + a['reason']})"
                      for n, a in availability.items())
    con.print(f"backends on this machine: {avail}")


def print_summary(run, cells) -> None:
    con = _console()
    rows = [report.cell_row(c) for c in cells]
    columns = report.columns(cells)
    table = Table(title=f"run {run.id} ({run.name}) — {run.status}")
    for col in columns:
        table.add_column(col, overflow="fold", max_width=60 if col == "note" else None)
    for r in rows:
        style = _STATUS_STYLE.get(r["status"], "")
        table.add_row(*[f"[{style}]{report.fmt(r.get(c), c)}[/]" if c == "status" else
                        report.fmt(r.get(c), c) for c in columns])
    con.print(table)
    if any(report.is_rotated(c) for c in cells):
        con.print(report.ROTATED_METRICS, markup=False, highlight=False)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    con.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


def print_runs(runs) -> None:
    con = _console()
    table = Table(title="runs")
    for col in ("id", "name", "created", "status", "cells", "git"):
        table.add_column(col)
    for r in runs:
        cells = ", ".join(f"{k} {v}" for k, v in sorted((r.counts or {}).items()))
        table.add_row(r.id, r.name, str(r.created_at)[:19], r.status, cells, (r.git_sha or "")[:12])
    con.print(table)


class RunProgress:
    """Cells done / total, the current cell and stage, and an ETA."""

    def __init__(self):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(file=sys.stderr), transient=False)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def event(self, kind: str, data: dict) -> None:
        if kind == "note":
            self.progress.console.print(f"[yellow]note:[/] {data['text']}", markup=True,
                                        highlight=False)
        elif kind == "start":
            self.task = self.progress.add_task("starting", total=data["total"])
        elif kind == "cell":
            self.progress.update(self.task, description=f"{data['key']} [cyan]{data['stage']}[/]")
        elif kind == "done":
            o = data["outcome"]
            style = _STATUS_STYLE.get(o.status, "")
            extra = f" [{o.stage}] {o.error}" if o.status == "failed" else ""
            self.progress.console.print(f"[{style}]{o.status:7s}[/] {o.key} ({o.duration_s:.1f} s){extra}")
            for warning in getattr(o, "warnings", None) or []:
                self.progress.console.print(f"        [yellow]warning:[/] {warning}", highlight=False)
            self.progress.advance(self.task)
