"""The dashboard's tables as (columns, rows), built by ``harness.report`` so the CLI exports
the same shapes, and download buttons for any of them (CSV / Markdown / HTML)."""
from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
import streamlit as st

from harness import report

from dashboard.analysis import pareto_front
from dashboard.context import Context

Table = tuple[list[str], list[dict]]
FRONTIER_COLUMNS = ["key", "model", "backend", "precision", "batch", "imgsz", "AP", "AP50",
                    "median_ms", "ms_per_image", "throughput_ips"]


def cells_table(ctx: Context) -> Table:
    return list(report.COLUMNS), [report.cell_row(c) for c in ctx.selected]


def classic_table(ctx: Context) -> Table:
    return report.classic_columns(), report.classic_table(ctx.selected)


def runs_table(ctx: Context) -> Table:
    return list(report.RUN_COLUMNS), [report.run_row(r) for r in ctx.runs]


def failures_table(ctx: Context) -> Table:
    return list(report.FAILURE_COLUMNS), report.failure_rows(ctx.selected)


def frontier_table(ctx: Context, x: str = "ms_per_image", y: str = "AP") -> Table:
    front = pareto_front(ctx.frame[ctx.frame["status"] == "ok"], x, y)
    return FRONTIER_COLUMNS, frame_rows(front, FRONTIER_COLUMNS)


#: name -> (label, builder)
TABLES: dict[str, tuple[str, Callable[[Context], Table]]] = {
    "cells": ("Cells of the run (summary)", cells_table),
    "classic": ("Classic table: batch 1 and 4 × fp32/fp16/int8", classic_table),
    "frontier": ("Pareto frontier (latency per image vs AP)", frontier_table),
    "failures": ("Failed and skipped cells", failures_table),
    "runs": ("All runs", runs_table),
}


def frame_rows(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    """DataFrame rows as plain dicts, NaN as None (what ``harness.report`` renders as —)."""
    rows = []
    for record in frame[columns].to_dict("records"):
        rows.append({k: None if isinstance(v, float) and math.isnan(v) else
                     (v.item() if hasattr(v, "item") else v) for k, v in record.items()})
    return rows


def show(columns: list[str], rows: list[dict], *, height: int | str = "auto") -> None:
    """A table as an interactive dataframe (empty tables still show their columns): numeric
    columns as numbers (AP with 4 decimals, others 2), missing values as —."""
    frame = pd.DataFrame(rows, columns=columns)
    config = {}
    for col in columns:
        values = [v for v in frame[col] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            if any(isinstance(v, float) for v in values) or not values:
                frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
                config[col] = st.column_config.NumberColumn(
                    format="%.4f" if report._is_ap(col) else "%.2f")
    st.dataframe(frame, hide_index=True, height=height, placeholder="—", column_config=config)


def download_buttons(name: str, columns: list[str], rows: list[dict], *, title: str,
                     stem: str) -> None:
    """CSV, Markdown and HTML downloads of one table, side by side."""
    formats = (("CSV", "csv", "text/csv", lambda: report.to_csv(rows, columns)),
               ("Markdown", "md", "text/markdown", lambda: report.to_markdown(rows, columns)),
               ("HTML", "html", "text/html", lambda: report.to_html(rows, columns, title=title)))
    for col, (label, ext, mime, render) in zip(st.columns(len(formats)), formats):
        col.download_button(f"Download {label}", render(), file_name=f"{stem}-{name}.{ext}",
                            mime=mime, key=f"dl-{name}-{ext}", on_click="ignore", icon=":material/download:")
