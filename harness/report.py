"""Tables of a run's cells: one row shape shared by the CLI summary and exports."""
from __future__ import annotations

import csv
import io
import json

COLUMNS = ("model", "backend", "precision", "batch", "imgsz", "device", "nms", "status", "AP",
           "AP50", "median_ms", "p99_ms", "mad_ms", "img_per_s", "e2e_median_ms", "note")


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
            "e2e_median_ms": e2e.get("median_ms"), "note": note}


def fmt(value, column: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if column in ("AP", "AP50"):
            return f"{value:.4f}"
        return f"{value:.2f}" if value < 1000 else f"{value:.0f}"
    return str(value)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(fmt(r[c], c).replace("|", "\\|").replace("\n", " ") for c in COLUMNS)
            + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def to_json(run, cells) -> str:
    """The documented, stable JSON of a run: ``{"run": {...}, "cells": [CellRecord.to_dict()...]}``."""
    return json.dumps({"run": run.to_dict(), "cells": [c.to_dict() for c in cells]}, indent=2,
                      default=str)
