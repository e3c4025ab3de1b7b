"""The dashboard's tables as (columns, rows), built by ``harness.report`` so the CLI exports
the same shapes; the headline table (fastest backend · precision per batch and its AP cost);
download buttons for any of them (CSV / Markdown / HTML / XLSX, each with the run header)."""
from __future__ import annotations

import html
import math
from collections.abc import Callable

import pandas as pd
import streamlit as st

from harness import report

from dashboard.analysis import pareto_front
from dashboard.charts import config_color
from dashboard.context import Context

Table = tuple[list[str], list[dict]]
FRONTIER_COLUMNS = ["key", "model", "backend", "precision", "batch", "imgsz", "AP", "AP50",
                    "median_ms", "ms_per_image", "throughput_ips"]


def cells_table(ctx: Context) -> Table:
    return report.columns(ctx.selected), [report.cell_row(c) for c in ctx.selected]


def classic_table(ctx: Context) -> Table:
    """Batch sizes and precisions of the whole run (not only the filtered cells), so the
    columns stay put while filtering."""
    batches, precisions = report.classic_axes(ctx.selected or ctx.cells)
    return (report.classic_columns(batches, precisions),
            report.classic_table(ctx.selected, batches, precisions))


def headline_rows(ctx: Context, budget_points: float = report.DEFAULT_BUDGET_POINTS) -> Table:
    return (list(report.HEADLINE_COLUMNS),
            report.headline_table(ctx.selected, budget_points, reference_cells=ctx.cells))


RUNS_EXTRA = ("gpu", "driver", "versions", "caveats")


def runs_table(ctx: Context) -> Table:
    """Every run with its hardware and caveats (stale running runs said so)."""
    from dashboard.context import load_cells, stale_for

    rows = []
    for i, r in enumerate(ctx.runs):
        row = report.run_row(r)
        cells = load_cells(ctx.url, r.id) if i < RUNS_DETAILED else []
        hw = report.hardware(r, cells)
        notes = report.caveats(r, cells) if cells else []
        stale = stale_for(r, cells) if cells else None
        if stale:
            row["status"] = "running (stale)"
            notes.insert(0, f"stale: no activity for {stale / 3600:.1f} h")
        rows.append({**row, "gpu": hw["gpu"] or ("CPU" if hw["cpu"] else None),
                     "driver": hw["driver"], "versions": report.versions(r, cells) or None,
                     "caveats": "; ".join(notes) or None})
    first = ["id", "name", "created", "status", "gpu", "driver", "caveats"]
    return [*first, *(c for c in (*report.RUN_COLUMNS, *RUNS_EXTRA) if c not in first)], rows


#: runs whose cells are read for the runs table's hardware and caveats (newest first)
RUNS_DETAILED = 50


def failures_table(ctx: Context) -> Table:
    return list(report.FAILURE_COLUMNS), report.failure_rows(ctx.selected)


def frontier_table(ctx: Context, x: str = "ms_per_image", y: str = "AP") -> Table:
    front = pareto_front(ctx.frame[ctx.frame["status"] == "ok"], x, y)
    return FRONTIER_COLUMNS, frame_rows(front, FRONTIER_COLUMNS)


#: name -> (label, builder)
TABLES: dict[str, tuple[str, Callable[[Context], Table]]] = {
    "headline": ("Headline: speed-up and ΔAP vs PyTorch fp32, per batch", headline_rows),
    "cells": ("Cells of the run (summary)", cells_table),
    "classic": ("Classic table: the run's batch sizes × precisions", classic_table),
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
                     stem: str, header: dict | None = None) -> None:
    """CSV, Markdown, HTML and XLSX download buttons (short labels: they fit at 800 px) for one
    table, side by side, each file starting with the run ``header``
    (:func:`harness.report.run_header`).  Files are made on click (deferred ``data``), so an
    unclicked button costs the page nothing."""
    formats = (("CSV", "csv", "text/csv", lambda: report.to_csv(rows, columns, header=header)),
               ("Markdown", "md", "text/markdown",
                lambda: report.to_markdown(rows, columns, header=header)),
               ("HTML", "html", "text/html",
                lambda: report.to_html(rows, columns, title=title, header=header)),
               ("XLSX", "xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                lambda: report.to_xlsx({name: (columns, rows)}, header=header)))
    for col, (label, ext, mime, render) in zip(st.columns(len(formats)), formats):
        col.download_button(label, render, file_name=f"{stem}-{name}.{ext}",
                            mime=mime, key=f"dl-{name}-{ext}", on_click="ignore", icon=":material/download:")


# -- the headline table ---------------------------------------------------------------------------

HEADLINE_SHOWN = {"swatch": "", "config": "backend · precision", "model": "model", "imgsz": "size",
                  "nms": "NMS", "ms_per_image": "ms / image", "img_per_s": "images/s",
                  "speedup": "speed-up", "AP": "AP", "dAP": "ΔAP", "dAP_pct": "ΔAP %", "flags": "note"}


def _shown_labels(rotated: bool) -> dict:
    """:data:`HEADLINE_SHOWN`, its AP columns labelled as rotated AP in a rotated run (#19)."""
    if not rotated:
        return HEADLINE_SHOWN
    return {**HEADLINE_SHOWN, "AP": "rotated AP", "dAP": "Δ rotated AP", "dAP_pct": "Δ rotated AP %"}


def headline_frame(rows: list[dict]) -> pd.DataFrame:
    """Display strings of :func:`harness.report.headline_table` rows (one batch): numbers
    formatted, ★ on the fastest cell within the AP budget, ⚠ on unstable latency; model /
    size / NMS columns only when they vary."""
    def num(v, spec):
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    shown = []
    for r in rows:
        flags = ("★ fastest within budget" if r["best"] else "") + (" ⚠ unstable" if r["unstable"] else "")
        if r["status"] != "ok":
            flags = r["status"]
        ms = r["ms_per_image"]
        shown.append({
            "swatch": "", "config": f"{r['backend']} · {r['precision']}", "model": r["model"],
            "imgsz": r["imgsz"], "nms": r["nms"],
            "ms_per_image": "—" if ms is None else (f"{ms:.3f}" if ms < 1 else f"{ms:.2f}"),
            "img_per_s": num(r["img_per_s"], ",.0f"),
            "speedup": "—" if r["speedup"] is None else f"{r['speedup']:.2f}×",
            "AP": num(r["AP"], ".4f"), "dAP": num(r["dAP"], "+.4f"),
            "dAP_pct": "—" if r["dAP_pct"] is None else f"{r['dAP_pct']:+.2f} %",
            "flags": flags.strip(), "_best": r["best"]})
    frame = pd.DataFrame(shown, columns=[*HEADLINE_SHOWN, "_best"])
    for k in ("model", "imgsz", "nms"):
        if frame[k].nunique() <= 1:
            frame = frame.drop(columns=k)
    return frame


def headline_html(rows: list[dict], rotated: bool = False) -> str:
    """One batch's headline as a plain HTML table (``table.detbench-headline``, batch in
    ``data-batch``): a colour swatch per backend · precision, the starred row green.  Plain
    HTML, one element: a styled ``st.table`` renders every cell as Markdown, which costs the
    browser seconds on a 100-cell run."""
    frame = headline_frame(rows)
    best = list(frame.pop("_best"))
    esc = html.escape
    labels = _shown_labels(rotated)
    head = "".join(f"<th>{esc(labels[c])}</th>" for c in frame.columns)
    body = []
    for i, record in enumerate(frame.to_dict("records")):
        tds = []
        for c, v in record.items():
            if c == "swatch":
                tds.append(f'<td class="swatch" style="background-color: {config_color(record["config"])}"></td>')
            else:
                tds.append(f'<td class="{c}">{esc(str(v))}</td>')
        cls = ' class="best"' if best[i] else ""
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    batch = rows[0]["batch"] if rows else ""
    return (f'<div class="detbench-scroll"><table class="detbench-headline" data-batch="{batch}">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def show_headline(rows: list[dict], key: str, rotated: bool = False) -> None:
    """Every batch size's table (:func:`headline_html`) under its label, as one element;
    ``rotated``: the AP columns say rotated AP (#19)."""
    parts = []
    for batch in sorted({r["batch"] for r in rows}):
        part = [r for r in rows if r["batch"] == batch]
        parts.append(f'<p class="detbench-batch"><b>batch {batch}</b> · {len(part)} cells</p>'
                     + headline_html(part, rotated))
    st.html("".join(parts))
