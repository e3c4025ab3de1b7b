"""Tables of a run's cells: one row shape shared by the CLI summary and exports.

Every table is a list of flat dicts; :func:`to_csv`, :func:`to_markdown`, :func:`to_html`
and :func:`to_xlsx` render any of them (``columns`` defaults to :data:`COLUMNS`, the
shape of :func:`cell_row`), each with an optional run header (:func:`run_header`: name,
GPU, dates, versions, caveats).  The dashboard's tables are built here too, so the CLI and
the dashboard export the same thing.
"""
from __future__ import annotations

import csv
import html
import io
import json

COLUMNS = ("model", "backend", "precision", "batch", "imgsz", "device", "nms", "status", "AP",
           "AP50", "median_ms", "p99_ms", "mad_ms", "img_per_s", "e2e_median_ms", "stages_s", "note")

#: a run with rotated cells (#19) also shows their box type and DOTA's mAP50; its AP / AP50 are
#: rotated-IoU AP (:data:`ROTATED_METRICS` says so in the run header and under the CLI table)
ROTATED_COLUMNS = {"nms": ("boxes",), "AP50": ("mAP50_07", "mAP50_area")}
ROTATED_METRICS = ("rotated boxes: AP / AP50 are COCO-style AP 0.50:0.95 / 0.50 on rotated IoU "
                   "(101-point); mAP50_07 / mAP50_area are DOTA mAP at IoU 0.5 (VOC-07 11-point / "
                   "area), difficult objects ignored")


def is_rotated(cell) -> bool:
    from harness.models.box_types import of_cell

    return of_cell(cell) == "rotated"


def columns(cells) -> list[str]:
    """:data:`COLUMNS`, plus :data:`ROTATED_COLUMNS` where any cell is rotated."""
    if not any(is_rotated(c) for c in cells):
        return list(COLUMNS)
    out = []
    for col in COLUMNS:
        out += [col, *ROTATED_COLUMNS.get(col, ())]
    return out


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
            "stages_s": stage_summary(getattr(cell, "stage_times", None)), "note": note,
            **({"boxes": "rotated", "mAP50_07": metrics.get("mAP50_07"),
                "mAP50_area": metrics.get("mAP50_area")} if is_rotated(cell) else {})}


def _is_ap(column: str) -> bool:
    """AP-like columns get 4 decimals: ``AP``, ``AP50``, ``AP_small``, ``b1 fp32 AP``, ``dAP``,
    ``mAP50_07``..."""
    last = column.split()[-1] if column.strip() else column
    return last.startswith(("AP", "mAP")) or last == "dAP"


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


def to_csv(rows: list[dict], columns: list[str] | tuple[str, ...] | None = None, *,
           header: dict | None = None) -> str:
    """CSV; a run ``header`` comes first as ``# key: value`` comment lines (pandas:
    ``read_csv(..., comment="#")``)."""
    cols = list(COLUMNS if columns is None else columns)
    buf = io.StringIO()
    for key, value in (header or {}).items():
        buf.write(f"# {key}: {_one_line(value)}\n")
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict], columns: list[str] | tuple[str, ...] | None = None, *,
                header: dict | None = None) -> str:
    """A Markdown table; a run ``header`` comes first as a bullet list."""
    cols = list(COLUMNS if columns is None else columns)
    head = "| " + " | ".join(cols) + " |"
    rule = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(fmt(r.get(c), c).replace("|", "\\|").replace("\n", " ") for c in cols)
            + " |" for r in rows]
    top = [f"- **{k}**: {_one_line(v)}" for k, v in (header or {}).items()]
    return "\n".join([*top, *([""] if top else []), head, rule, *body]) + "\n"


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
dl.run { display: grid; grid-template-columns: max-content auto; gap: 0.1rem 0.8rem; font-size: 0.85rem; }
dl.run dt { font-weight: 600; } dl.run dd { margin: 0; }
""".strip()


def to_html(rows: list[dict], columns: list[str] | tuple[str, ...] | None = None, *,
            title: str | None = None, header: dict | None = None) -> str:
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
    top = "".join(f"<dt>{esc(str(k))}</dt><dd>{esc(_one_line(v))}</dd>"
                  for k, v in (header or {}).items())
    top = f'<dl class="run">{top}</dl>\n' if top else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title_text}</title>\n<style>\n{_HTML_STYLE}\n</style>\n</head>\n<body>\n"
            f"<h1>{title_text}</h1>\n{top}<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>\n</body>\n</html>\n")


def to_json(run, cells, alignments: dict | None = None) -> str:
    """The documented, stable JSON of a run: ``{"run": {...}, "header": run_header(...),
    "cells": [CellRecord.to_dict()...]}`` plus ``"alignment": {cell key: record}`` when
    alignment records are given."""
    doc = {"run": run.to_dict(), "header": run_header(run, cells),
           "cells": [c.to_dict() for c in cells]}
    if alignments is not None:
        doc["alignment"] = {c.key: alignments[c.id] for c in cells if c.id in alignments}
    return json.dumps(doc, indent=2, default=str)


# -- tables the dashboard shows (and exports) -----------------------------------------------------

RUN_COLUMNS = ("id", "name", "created", "finished", "status", "ok", "failed", "skipped",
               "pending", "git_sha", "detbench_version")
FAILURE_COLUMNS = ("model", "backend", "precision", "batch", "imgsz", "device", "nms", "status",
                   "stage", "error")
CLASSIC_KEYS = ("model", "backend", "imgsz", "device", "nms")
CLASSIC_PRECISIONS = ("fp32", "fp16", "bf16", "int8")


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


def classic_axes(cells) -> tuple[list[int], list[str]]:
    """The batch sizes and precisions the cells really have: batches ascending, precisions in
    the order fp32, fp16, bf16, int8, then any other alphabetically."""
    batches = sorted({c.batch for c in cells})
    found = {c.precision for c in cells}
    order = [p for p in CLASSIC_PRECISIONS if p in found] + sorted(found - set(CLASSIC_PRECISIONS))
    return batches, order


def classic_columns(batches=None, precisions=None, cells=None) -> list[str]:
    """``model .. nms`` then, per batch and precision, ``b{B} {prec} AP`` and ``b{B} {prec} ms``.
    Batches and precisions are the given ones, else those of ``cells`` (:func:`classic_axes`)."""
    if batches is None or precisions is None:
        found_b, found_p = classic_axes(cells or [])
        batches = found_b if batches is None else batches
        precisions = found_p if precisions is None else precisions
    return [*CLASSIC_KEYS, *(f"b{b} {p} {what}" for b in batches for p in precisions
                             for what in ("AP", "ms"))]


def classic_table(cells, batches=None, precisions=None) -> list[dict]:
    """The classic deployment table: one row per model × backend × imgsz × device × nms, and
    for every batch size × precision of the run (or the given ones) the COCO AP and the median
    model latency (ms per batch of B images) of the ``ok`` cell; ``None`` where that cell is
    missing, failed or skipped.  Rows appear in the cells' order."""
    found_b, found_p = classic_axes(cells)
    batches = found_b if batches is None else list(batches)
    precisions = found_p if precisions is None else list(precisions)
    columns = classic_columns(batches, precisions)
    rows: dict[tuple, dict] = {}
    for c in cells:
        if c.batch not in batches or c.precision not in precisions:
            continue
        key = tuple(getattr(c, k) for k in CLASSIC_KEYS)
        row = rows.setdefault(key, {**dict(zip(CLASSIC_KEYS, key)),
                                    **dict.fromkeys(columns[len(key):])})
        if c.status == "ok":
            row[f"b{c.batch} {c.precision} AP"] = (c.metrics or {}).get("AP")
            row[f"b{c.batch} {c.precision} ms"] = (c.latency or {}).get("median_ms")
    return list(rows.values())


# -- the headline: fastest backend · precision per batch, and what it costs in AP ----------------

REFERENCE = ("pytorch", "fp32")
#: default AP budget of the headline, in AP points (0.01 AP = 1 point)
DEFAULT_BUDGET_POINTS = 1.0
#: cells ranked together: NMS variants apart, since ``nms: none`` times exclude the host NMS
HEADLINE_GROUP = ("model", "imgsz", "device", "nms")
HEADLINE_COLUMNS = ("batch", "model", "imgsz", "device", "nms", "backend", "precision", "status",
                    "ms_per_image", "img_per_s", "speedup", "AP", "dAP", "dAP_pct", "best",
                    "unstable", "reference")


def reference_of(cell, cells):
    """The PyTorch fp32 ``ok`` cell that ``cell`` is compared with: same model, input size,
    device and batch (NMS ``none`` preferred, then the same NMS); None when the run has none."""
    same = [c for c in cells if (c.backend, c.precision) == REFERENCE and c.status == "ok"
            and (c.model, c.imgsz, c.device, c.batch) == (cell.model, cell.imgsz, cell.device,
                                                          cell.batch)]
    same.sort(key=lambda c: (c.nms != "none", c.nms != cell.nms, c.position))
    return same[0] if same else None


def _ms_per_image(cell) -> float | None:
    median = (cell.latency or {}).get("median_ms")
    return None if median is None else median / (cell.batch or 1)


def deltas(cell, reference) -> dict:
    """``speedup`` (reference ms per image ÷ this cell's), ``dAP`` (AP − reference AP) and
    ``dAP_pct`` (``dAP`` in % of the reference AP); None where a value is missing."""
    out = {"speedup": None, "dAP": None, "dAP_pct": None,
           "reference": reference.key if reference is not None else None}
    if reference is None or cell.status != "ok":
        return out
    mine, theirs = _ms_per_image(cell), _ms_per_image(reference)
    if mine and theirs:
        out["speedup"] = theirs / mine
    ap, ref_ap = (cell.metrics or {}).get("AP"), (reference.metrics or {}).get("AP")
    if ap is not None and ref_ap is not None:
        out["dAP"] = ap - ref_ap
        out["dAP_pct"] = 100.0 * (ap - ref_ap) / ref_ap if ref_ap > 0 else None
    return out


def headline_table(cells, budget_points: float = DEFAULT_BUDGET_POINTS,
                   reference_cells=None) -> list[dict]:
    """Rows of :data:`HEADLINE_COLUMNS`: every cell, grouped by batch (ascending) then model ·
    size · device · NMS, fastest first (ms per image; cells without a latency last).  ``best`` is
    True on the fastest ``ok`` cell of its batch and group whose AP is at most
    ``budget_points`` AP points (× 0.01 AP) below its reference's.  References come from
    ``reference_cells`` (default: ``cells``), so a filtered view keeps its baseline."""
    pool = list(reference_cells if reference_cells is not None else cells)
    rows = []
    for c in cells:
        lat = c.latency or {}
        d = deltas(c, reference_of(c, pool))
        rows.append({"batch": c.batch, "model": c.model, "imgsz": c.imgsz, "device": c.device,
                     "nms": c.nms, "backend": c.backend, "precision": c.precision,
                     "status": c.status, "ms_per_image": _ms_per_image(c) if c.status == "ok" else None,
                     "img_per_s": lat.get("throughput_ips") if c.status == "ok" else None,
                     "speedup": d["speedup"], "AP": (c.metrics or {}).get("AP") if c.status == "ok" else None,
                     "dAP": d["dAP"], "dAP_pct": d["dAP_pct"], "best": False,
                     "unstable": bool(lat.get("unstable")), "reference": d["reference"]})
    limit = -budget_points / 100.0 - 1e-12
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["batch"], *(r[k] for k in HEADLINE_GROUP)), []).append(r)
    for members in groups.values():
        fit = [r for r in members if r["status"] == "ok" and r["ms_per_image"] is not None
               and r["dAP"] is not None and r["dAP"] >= limit]
        if fit:
            min(fit, key=lambda r: r["ms_per_image"])["best"] = True
    order = {key: i for i, key in enumerate(dict.fromkeys(
        tuple(r[k] for k in HEADLINE_GROUP) for r in rows))}
    rows.sort(key=lambda r: (r["batch"], order[tuple(r[k] for k in HEADLINE_GROUP)],
                             r["ms_per_image"] is None, r["ms_per_image"] or 0.0))
    return rows


# -- the run header of every export ---------------------------------------------------------------

KEY_PACKAGES = ("torch", "onnxruntime-gpu", "onnxruntime", "tensorrt", "tensorrt_rtx", "mmyolo")


def hardware(run, cells) -> dict:
    """GPU name, count, driver, CUDA and CPU of a run, from the run's environment or (where
    detbench records them) the cells' provenance; missing values are None."""
    env = run.environment or {}
    prov = next((c.provenance for c in cells if (c.provenance or {}).get("gpu_name")), None) or {}
    gpus = sorted({(c.provenance or {}).get("gpu_name") for c in cells} - {None})
    gpu = ", ".join(gpus) or env.get("gpu") or env.get("gpu_name")
    return {"gpu": gpu, "driver": prov.get("driver") or env.get("driver"),
            "cuda": prov.get("torch_cuda") or env.get("cuda"), "cpu": env.get("cpu"),
            "host": env.get("host")}


def versions(run, cells=()) -> str:
    """``torch 2.11.0, onnxruntime-gpu 1.31.1, ...`` of the packages that decide the numbers."""
    packages = dict((run.environment or {}).get("packages") or {})
    if not packages:  # older runs: the versions a cell's provenance recorded
        prov = next((c.provenance for c in cells if c.provenance), None) or {}
        packages = {k: v for k, v in prov.items() if k in KEY_PACKAGES and isinstance(v, str)}
    if packages.get("onnxruntime-gpu"):
        packages.pop("onnxruntime", None)
    return ", ".join(f"{k} {packages[k]}" for k in KEY_PACKAGES if packages.get(k))


def random_weights(cells) -> list:
    """Cells whose model runs with random weights (``checkpoint: random``): AP means nothing."""
    return [c for c in cells
            if str(((c.params or {}).get("model_spec") or {}).get("checkpoint", "")).lower() == "random"]


def unstable(cells) -> list:
    return [c for c in cells if (c.latency or {}).get("unstable")]


def caveats(run, cells) -> list[str]:
    """What a reader must know before trusting the numbers, in words (may be empty)."""
    out = []
    rnd = random_weights(cells)
    if rnd:
        out.append(f"random weights in {len(rnd)} cell(s) ({', '.join(sorted({c.model for c in rnd}))}):"
                   " AP is meaningless")
    shaky = unstable(cells)
    if shaky:
        out.append(f"unstable latency in {len(shaky)} cell(s) (coefficient of variation above "
                   "timing.cv_warn: busy host, throttling or unlocked clocks)")
    counts = run.counts or {}
    if run.status != "finished":
        out.append(f"run {run.status}: {counts.get('pending', 0) + counts.get('running', 0)} "
                   "cell(s) not measured yet")
    if counts.get("failed"):
        out.append(f"{counts['failed']} failed cell(s)")
    return out


def run_header(run, cells) -> dict[str, str]:
    """The header every export starts with: which run, on what hardware, with which versions."""
    hw = hardware(run, cells)
    machine = hw["gpu"] or (f"CPU only ({hw['cpu']})" if hw["cpu"] else "—")
    if hw["gpu"] and hw["driver"]:
        machine += f" · driver {hw['driver']}" + (f" · CUDA {hw['cuda']}" if hw["cuda"] else "")
    rotated = {"metrics": ROTATED_METRICS} if any(is_rotated(c) for c in cells) else {}
    return {"run": f"{run.name} ({run.id})", "status": run.status, **rotated,
            "created": (_when(run.created_at) or "—") + " UTC",
            "finished": (_when(run.finished_at) + " UTC") if run.finished_at else "—",
            "hardware": machine + (f" · host {hw['host']}" if hw["host"] else ""),
            "versions": versions(run, cells) or "—",
            "detbench": f"{run.detbench_version}" + (f" (git {run.git_sha[:12]})" if run.git_sha else ""),
            "caveats": "; ".join(caveats(run, cells)) or "none"}


# -- XLSX ------------------------------------------------------------------------------------------


def to_xlsx(sheets: dict[str, tuple[list[str], list[dict]]], *, header: dict | None = None) -> bytes:
    """An Excel workbook (openpyxl): one sheet per ``name: (columns, rows)``, each starting with
    the run ``header`` (bold keys), then the table with a bold, frozen column row; numbers
    stay numbers (AP columns shown with 4 decimals, others 2)."""
    try:
        from openpyxl import Workbook
        from openpyxl.styles import Font, PatternFill
    except ImportError as exc:  # an optional extra: say how to get it
        from harness.errors import UserError

        raise UserError("XLSX export needs openpyxl: pip install -e '.[dashboard]' "
                        "(or pip install openpyxl)") from exc
    book = Workbook()
    book.remove(book.active)
    bold, fill = Font(bold=True), PatternFill("solid", fgColor="F6F8FA")
    for name, (columns, rows) in sheets.items():
        sheet = book.create_sheet(_sheet_name(name))
        for key, value in (header or {}).items():
            sheet.append([key, _one_line(value)])
            sheet.cell(sheet.max_row, 1).font = bold
        if header:
            sheet.append([])
        sheet.append(list(columns))
        top = sheet.max_row
        for i in range(1, len(columns) + 1):
            sheet.cell(top, i).font = bold
            sheet.cell(top, i).fill = fill
        for r in rows:
            sheet.append([_xlsx_value(r.get(c)) for c in columns])
            for i, c in enumerate(columns, start=1):
                if isinstance(r.get(c), float):
                    sheet.cell(sheet.max_row, i).number_format = "0.0000" if _is_ap(c) else "0.00"
        sheet.freeze_panes = sheet.cell(top + 1, 1)
        for i, c in enumerate(columns, start=1):
            width = max([len(str(c))] + [len(fmt(r.get(c), c)) for r in rows[:200]])
            sheet.column_dimensions[sheet.cell(top, i).column_letter].width = min(60, width + 2)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _xlsx_value(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return value


def _sheet_name(name: str) -> str:
    return "".join(ch for ch in name if ch not in "[]:*?/\\")[:31] or "sheet"


def _one_line(value) -> str:
    return " ".join(str(value).split())


# -- a whole run in one format (``detbench export``) -------------------------------------------------

FORMATS = ("csv", "md", "html", "json", "xlsx")


def export_run(fmt: str, run, cells, alignments: dict | None = None) -> str | bytes:
    """``detbench export``: the cells table (:data:`COLUMNS`) with the run header, in ``fmt``;
    XLSX (bytes) adds the headline and classic tables as sheets, JSON is :func:`to_json`."""
    header = run_header(run, cells)
    rows = [cell_row(c) for c in cells]
    cols = columns(cells)
    if fmt == "csv":
        return to_csv(rows, cols, header=header)
    if fmt == "md":
        return to_markdown(rows, cols, header=header)
    if fmt == "html":
        return to_html(rows, cols, title=f"detbench run {run.id} ({run.name})", header=header)
    if fmt == "json":
        return to_json(run, cells, alignments)
    if fmt == "xlsx":
        return to_xlsx({"cells": (cols, rows),
                        "headline": (list(HEADLINE_COLUMNS), headline_table(cells)),
                        "classic": (classic_columns(cells=cells), classic_table(cells))},
                       header=header)
    raise ValueError(f"unknown export format {fmt!r}")


def _when(value) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")
