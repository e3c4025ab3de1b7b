"""Tables of a run's cells: one row shape shared by the CLI summary and exports.

Every table is a list of flat dicts; :func:`to_csv`, :func:`to_markdown` and
:func:`to_html` render any of them (``columns`` defaults to :data:`COLUMNS`, the
shape of :func:`cell_row`).  The dashboard's tables are built here too, so the
CLI and the dashboard export the same thing.
"""
from __future__ import annotations

import csv
import html
import io
import json

COLUMNS = ("model", "backend", "precision", "batch", "imgsz", "device", "nms", "status", "AP",
           "AP50", "median_ms", "p99_ms", "mad_ms", "img_per_s", "e2e_median_ms", "stages_s", "note")

#: the order stage times are shown in (others, if any, follow)
STAGE_ORDER = ("startup", "load", "export", "build", "calibrate", "preprocess", "infer", "eval",
               "measure", "alignment")


def stage_summary(stage_times: dict | None) -> str | None:
    """``"startup 1.2 · load 3.4 · infer 5.0 ..."``: a cell's wall seconds per stage."""
    if not stage_times:
        return None
    names = [s for s in STAGE_ORDER if s in stage_times] + \
        [s for s in stage_times if s not in STAGE_ORDER]
    return " · ".join(f"{s} {float(stage_times[s]):.1f}" for s in names
                      if isinstance(stage_times[s], (int, float)))


def cell_row(cell) -> dict:
    """The flat summary of one cell (a ``CellRecord``)."""
    metrics, lat, e2e = cell.metrics or {}, cell.latency or {}, cell.latency_e2e or {}
    note = cell.error or ""
    if cell.status == "failed" and cell.stage:
        note = f"[{cell.stage}] {note}"
    elif cell.warnings:
        note = "; ".join(cell.warnings)
    return {"model": cell.model, "backend": cell.backend, "precision": cell.precision,
            "batch": cell.batch, "imgsz": cell.imgsz, "device": cell.device, "nms": cell.nms,
            "status": cell.status, "AP": metrics.get("AP"), "AP50": metrics.get("AP50"),
            "median_ms": lat.get("median_ms"), "p99_ms": lat.get("p99_ms"),
            "mad_ms": lat.get("mad_ms"), "img_per_s": lat.get("throughput_ips"),
            "e2e_median_ms": e2e.get("median_ms"),
            "stages_s": stage_summary(getattr(cell, "stage_times", None)), "note": note}


def _is_ap(column: str) -> bool:
    """AP-like columns get 4 decimals: ``AP``, ``AP50``, ``AP_small``, ``b1 fp32 AP``..."""
    last = column.split()[-1] if column.strip() else column
    return last.startswith("AP")


def fmt(value, column: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:  # NaN (pandas' missing value)
            return "—"
        if _is_ap(column):
            return f"{value:.4f}"
        return f"{value:.2f}" if value < 1000 else f"{value:.0f}"
    return str(value)


def to_csv(rows: list[dict], columns: list[str] | tuple[str, ...] | None = None) -> str:
    cols = list(COLUMNS if columns is None else columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict], columns: list[str] | tuple[str, ...] | None = None) -> str:
    cols = list(COLUMNS if columns is None else columns)
    head = "| " + " | ".join(cols) + " |"
    rule = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(fmt(r.get(c), c).replace("|", "\\|").replace("\n", " ") for c in cols)
            + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


_HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #1f2328; }
h1 { font-size: 1.2rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.5rem; vertical-align: top; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.note { white-space: pre-wrap; max-width: 40rem; }
tr.failed td { background: #ffebe9; }
tr.skipped td { color: #6e7781; }
""".strip()


def to_html(rows: list[dict], columns: list[str] | tuple[str, ...] | None = None, *,
            title: str | None = None) -> str:
    """A standalone HTML page holding one table (no scripts, no external files).

    Values are formatted as in :func:`to_markdown` and HTML-escaped; a row whose
    ``status`` is failed/skipped gets that as its CSS class.
    """
    cols = list(COLUMNS if columns is None else columns)
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in cols)
    body = []
    for r in rows:
        status = r.get("status")
        cls = f' class="{esc(str(status))}"' if status in ("failed", "skipped") else ""
        tds = []
        for c in cols:
            value = r.get(c)
            kind = "num" if isinstance(value, (int, float)) and not isinstance(value, bool) else (
                "note" if c in ("note", "error", "log_tail") else "")
            attr = f' class="{kind}"' if kind else ""
            tds.append(f"<td{attr}>{esc(fmt(value, c))}</td>")
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    title_text = esc(title or "detbench results")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title_text}</title>\n<style>\n{_HTML_STYLE}\n</style>\n</head>\n<body>\n"
            f"<h1>{title_text}</h1>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>\n</body>\n</html>\n")


def to_json(run, cells, alignments: dict | None = None) -> str:
    """The documented, stable JSON of a run: ``{"run": {...}, "cells": [CellRecord.to_dict()...]}``
    plus ``"alignment": {cell key: record}`` when alignment records are given."""
    doc = {"run": run.to_dict(), "cells": [c.to_dict() for c in cells]}
    if alignments is not None:
        doc["alignment"] = {c.key: alignments[c.id] for c in cells if c.id in alignments}
    return json.dumps(doc, indent=2, default=str)


# -- tables the dashboard shows (and exports) -----------------------------------------------------

RUN_COLUMNS = ("id", "name", "created", "finished", "status", "ok", "failed", "skipped",
               "pending", "git_sha", "detbench_version")
FAILURE_COLUMNS = ("model", "backend", "precision", "batch", "imgsz", "device", "nms", "status",
                   "stage", "error")
CLASSIC_KEYS = ("model", "backend", "imgsz", "device", "nms")
CLASSIC_BATCHES = (1, 4)
CLASSIC_PRECISIONS = ("fp32", "fp16", "int8")


def run_row(run) -> dict:
    """One run (a ``RunRecord``) as a flat row of :data:`RUN_COLUMNS`."""
    counts = run.counts or {}
    return {"id": run.id, "name": run.name, "created": _when(run.created_at),
            "finished": _when(run.finished_at), "status": run.status,
            "ok": counts.get("ok", 0), "failed": counts.get("failed", 0),
            "skipped": counts.get("skipped", 0),
            "pending": counts.get("pending", 0) + counts.get("running", 0),
            "git_sha": (run.git_sha or "")[:12] or None, "detbench_version": run.detbench_version}


def failure_rows(cells) -> list[dict]:
    """Failed cells (and skipped ones, with their reason), rows of :data:`FAILURE_COLUMNS`."""
    return [{**{k: getattr(c, k) for k in FAILURE_COLUMNS if k not in ("stage", "error")},
             "stage": c.stage, "error": c.error}
            for c in cells if c.status in ("failed", "skipped")]


def classic_columns(batches=CLASSIC_BATCHES, precisions=CLASSIC_PRECISIONS) -> list[str]:
    """``model .. nms`` then, per batch and precision, ``b{B} {prec} AP`` and ``b{B} {prec} ms``."""
    return [*CLASSIC_KEYS, *(f"b{b} {p} {what}" for b in batches for p in precisions
                             for what in ("AP", "ms"))]


def classic_table(cells, batches=CLASSIC_BATCHES, precisions=CLASSIC_PRECISIONS) -> list[dict]:
    """The classic deployment table: one row per model × backend × imgsz × device × nms, and
    for batch 1 and 4 × fp32/fp16/int8 the COCO AP and the median model latency (ms per batch
    of B images) of the ``ok`` cell; ``None`` where that cell is missing, failed or skipped.
    Rows appear in the cells' order; a group with no cell in those batches/precisions is left out.
    """
    rows: dict[tuple, dict] = {}
    for c in cells:
        if c.batch not in batches or c.precision not in precisions:
            continue
        key = tuple(getattr(c, k) for k in CLASSIC_KEYS)
        row = rows.setdefault(key, {**dict(zip(CLASSIC_KEYS, key)),
                                    **dict.fromkeys(classic_columns(batches, precisions)[len(key):])})
        if c.status == "ok":
            row[f"b{c.batch} {c.precision} AP"] = (c.metrics or {}).get("AP")
            row[f"b{c.batch} {c.precision} ms"] = (c.latency or {}).get("median_ms")
    return list(rows.values())


def _when(value) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")
