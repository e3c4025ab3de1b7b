"""Pure analysis for the dashboard: cells as a DataFrame, the Pareto frontier, change points,
and where a cell's alignment data lives.  No Streamlit here, so it is unit-testable."""
from __future__ import annotations

import math
import numbers
import statistics
from collections.abc import Sequence
from typing import Any

import pandas as pd

#: identity of a cell across runs (the arguments of ``Store.history``)
IDENTITY = ("model", "backend", "precision", "batch", "imgsz", "device", "nms")

#: (column, label) of the numbers the dashboard plots
METRICS = {
    "AP": "AP (COCO 0.50:0.95)",
    "AP50": "AP50",
    "AP75": "AP75",
    "median_ms": "median latency (ms / batch)",
    "p99_ms": "p99 latency (ms / batch)",
    "ms_per_image": "median latency per image (ms)",
    "throughput_ips": "throughput (images/s)",
    "e2e_median_ms": "end-to-end median (ms / batch)",
    "speedup": "speed-up vs PyTorch fp32 (×)",
    "dAP": "ΔAP vs PyTorch fp32",
}
#: the AP labels of a rotated run (#19): its AP is rotated-IoU AP, not COCO bbox AP
ROTATED_METRICS = {"AP": "rotated AP (0.50:0.95, rotated IoU)", "AP50": "rotated AP50 (rotated IoU)",
                   "AP75": "rotated AP75 (rotated IoU)", "dAP": "Δ rotated AP vs PyTorch fp32"}


def metric_label(metric: str, frame: pd.DataFrame | None = None) -> str:
    """:data:`METRICS`' label, or :data:`ROTATED_METRICS`' where ``frame`` holds rotated cells."""
    if frame is not None and "boxes" in frame and (frame["boxes"] == "rotated").any():
        return ROTATED_METRICS.get(metric) or METRICS.get(metric, metric)
    return METRICS.get(metric, metric)


LOWER_IS_BETTER = {"median_ms", "p99_ms", "ms_per_image", "e2e_median_ms"}
#: short, URL-friendly names of those columns, as the pages' pickers show them
PICK = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "median ms": "median_ms", "p99 ms": "p99_ms",
        "ms per image": "ms_per_image", "images/s": "throughput_ips",
        "e2e median ms": "e2e_median_ms"}

#: change-point rule (shown in the UI)
CP_WINDOW, CP_Z, CP_MIN_HISTORY, CP_FLOOR = 5, 3.0, 3, 0.01
MAD_TO_SIGMA = 1.4826
CP_RULE = (f"A run is marked as a change point when its value lies outside median ± {CP_Z:g} × "
           f"1.4826·MAD of the previous {CP_WINDOW} runs' values (needs at least "
           f"{CP_MIN_HISTORY} earlier runs; the spread is floored at {CP_FLOOR:.0%} of the median "
           f"so a perfectly flat history doesn't flag rounding noise). The shaded band is that "
           f"allowed range. Failed attempts are listed but not used.")


def cell_values(cell) -> dict[str, Any]:
    """The plotted numbers of one ``CellRecord`` (or history row dict), ``None`` when absent."""
    get = (lambda k: cell.get(k)) if isinstance(cell, dict) else (lambda k: getattr(cell, k))
    metrics, lat, e2e = get("metrics") or {}, get("latency") or {}, get("latency_e2e") or {}
    median, batch = lat.get("median_ms"), get("batch") or 1
    return {"AP": metrics.get("AP"), "AP50": metrics.get("AP50"), "AP75": metrics.get("AP75"),
            "median_ms": median, "p90_ms": lat.get("p90_ms"), "p99_ms": lat.get("p99_ms"),
            "mad_ms": lat.get("mad_ms"), "ms_per_image": None if median is None else median / batch,
            "throughput_ips": lat.get("throughput_ips"), "cv": lat.get("cv"),
            "unstable": lat.get("unstable"), "e2e_median_ms": e2e.get("median_ms")}


def row_label(model: str, backend: str, precision: str, extra: Sequence[str] = ()) -> str:
    return " · ".join([model, backend, precision, *extra])


DELTA_COLUMNS = ("speedup", "dAP", "dAP_pct", "reference")


def cells_frame(cells, run_cells=None) -> pd.DataFrame:
    """One row per cell: identity, status, stage, error, :func:`cell_values` and, against the
    PyTorch fp32 reference of the same model · size · device · batch found in ``run_cells``
    (default ``cells``: pass the whole run so a filter cannot remove the baseline),
    ``speedup``, ``dAP``, ``dAP_pct`` and ``reference`` (:func:`harness.report.deltas`).

    ``row`` (model · backend · precision, plus device/nms when those vary and the calibration
    point of a calibration study's int8 cells) and ``col``
    ``boxes``: ``horizontal`` or ``rotated`` (#19; a rotated cell's AP is rotated-IoU AP).
    (``b{batch} · {imgsz}px``) label the overview heatmap; ``config`` is backend · precision.
    """
    from harness.report import deltas, reference_of

    pool = list(cells if run_cells is None else run_cells)
    from harness.models.box_types import of_cell

    records = [{"id": c.id, "key": c.key, **{k: getattr(c, k) for k in IDENTITY},
                "status": c.status, "stage": c.stage, "error": c.error, **cell_values(c),
                **deltas(c, reference_of(c, pool)),
                "calibration": (c.params or {}).get("calibration_variant"), "boxes": of_cell(c)}
               for c in cells]
    columns = ["id", "key", *IDENTITY, "status", "stage", "error",
               *cell_values({"batch": 1}).keys(), *DELTA_COLUMNS, "calibration", "boxes"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    vary = [k for k in ("device", "nms") if frame[k].nunique() > 1]
    # a calibration study's int8 cells share their axes: the point (e.g. "cal entropy-128") tells them apart
    frame["row"] = [row_label(r.model, r.backend, r.precision, [str(getattr(r, k)) for k in vary]
                              + ([f"cal {r.calibration}"] if isinstance(r.calibration, str) else []))
                    for r in frame.itertuples()]
    frame["col"] = [f"b{b} · {s}px" for b, s in zip(frame["batch"], frame["imgsz"])]
    frame["config"] = frame["backend"] + " · " + frame["precision"]
    frame["series"] = [row_label(r.model, r.backend, r.precision,
                                 [f"{r.imgsz}px", *(str(getattr(r, k)) for k in vary),
                                  *([f"cal {r.calibration}"] if isinstance(r.calibration, str) else [])])
                       for r in frame.itertuples()]  # one line per cell family: batch is the x-axis
    return frame


def pareto_front(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows not dominated for lower ``x`` and higher ``y`` (rows lacking either are ignored),
    sorted by ``x``.  Equal points both stay; a point with the same ``x`` and a lower ``y``,
    or the same ``y`` and a higher ``x``, is dominated."""
    mask = pd.Series([_finite(a) and _finite(b) for a, b in zip(frame[x], frame[y])],
                     index=frame.index, dtype=bool)
    data = frame.loc[mask]
    ordered = data.sort_values([x, y], ascending=[True, False], kind="stable")
    keep, best, last = [], -math.inf, None
    for idx, (xv, yv) in zip(ordered.index, zip(ordered[x], ordered[y])):
        if yv > best or (last is not None and (xv, yv) == last):
            keep.append(idx)
            best, last = max(best, yv), (xv, yv)
    return ordered.loc[keep]


def change_points(values: Sequence[float | None], *, window: int = CP_WINDOW, z: float = CP_Z,
                  min_history: int = CP_MIN_HISTORY, floor: float = CP_FLOOR) -> pd.DataFrame:
    """For each value: ``center``/``lower``/``upper`` of the band built from the previous
    ``window`` non-missing values (NaN while fewer than ``min_history``) and ``change``, True
    when the value lies outside the band.  See :data:`CP_RULE`."""
    rows, history = [], []
    for value in values:
        center = lower = upper = math.nan
        change = False
        if len(history) >= min_history:
            recent = history[-window:]
            center = statistics.median(recent)
            mad = statistics.median(abs(v - center) for v in recent)
            spread = max(MAD_TO_SIGMA * mad, floor * abs(center), 1e-12)
            lower, upper = center - z * spread, center + z * spread
            change = value is not None and _finite(value) and not lower <= value <= upper
        rows.append({"value": value, "center": center, "lower": lower, "upper": upper,
                     "change": bool(change)})
        if value is not None and _finite(value):
            history.append(float(value))
    return pd.DataFrame(rows, columns=["value", "center", "lower", "upper", "change"])


def alignment_of(store, cell) -> dict | None:
    """A cell's alignment data (attribution counts, IoU/score-delta histograms, worst images)
    wherever the store keeps it: ``store.alignment(cell_id)`` when the store has that method, a
    ``cell.alignment`` field, or ``cell.metrics['alignment']``.  None when there is none."""
    getter = getattr(store, "alignment", None)
    if callable(getter):
        found = getter(cell.id)
        if found:
            return found
    found = getattr(cell, "alignment", None)
    if found:
        return found
    found = (cell.metrics or {}).get("alignment")
    return found or None


def histogram_of(spec: Any) -> tuple[list, list] | None:
    """``(bin labels or left edges, counts)`` from a histogram in any common shape:
    ``{"edges": [...], "counts": [...]}`` (or ``bins``), ``{"bin": count}``, or a list of
    ``{"bin"/"edge"/"lo", "count"}`` rows.  Raw value lists return None (plot them directly)."""
    if isinstance(spec, dict):
        counts = spec.get("counts") or spec.get("count") or spec.get("hist")
        edges = spec.get("edges") or spec.get("bins") or spec.get("bin_edges")
        if isinstance(counts, list) and isinstance(edges, list) and edges:
            if len(edges) == len(counts) + 1:
                labels = [f"{_short(a)}–{_short(b)}" for a, b in zip(edges, edges[1:])]
            else:
                labels = [_short(e) for e in edges[:len(counts)]]
            return labels, counts
        if spec and all(isinstance(v, (int, float)) for v in spec.values()):
            return list(map(str, spec)), list(spec.values())
    if isinstance(spec, list) and spec and all(isinstance(r, dict) for r in spec):
        label_key = next((k for k in ("bin", "edge", "lo", "label") if k in spec[0]), None)
        if label_key and "count" in spec[0]:
            return [_short(r[label_key]) for r in spec], [r["count"] for r in spec]
    return None


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _finite(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


CAUSE_WORDS = {"pre_topk": "pre-NMS top-k truncation", "score_thr": "the score threshold boundary",
               "keep_topk": "keep-top-k truncation", "nms": "the NMS implementation or IoU threshold",
               "numeric": "numeric drift of the model's outputs", "other": "unexplained ('other')"}


def alignment_summary(data: dict) -> dict:
    """The stored alignment record in plain words: ``headline`` (Markdown), ``warnings``
    (replayed-image shortfall, lints) and ``notes`` (the analysis' own notes)."""
    def n(key):
        v = data.get(key)
        return v if isinstance(v, (int, float)) else None

    cell, ref = data.get("cell") or "this cell", data.get("reference") or "the reference"
    parts = [f"**{cell}** against **{ref}**:"]
    if n("ap_delta") is not None:
        pct = f" ({100 * n('ap_delta') / n('ap_ref'):+.2f} %)" if n("ap_ref") else ""
        parts.append(f"ΔAP **{n('ap_delta'):+.4f}**{pct}.")
    if n("reference_detections") is not None:
        matched = n("matched_pct")
        parts.append(f"{matched:.1f} % of the reference's {n('reference_detections'):,} detections "
                     "matched" if matched is not None else
                     f"{n('matched') or 0:,} of {n('reference_detections'):,} detections matched")
        parts[-1] += (f"; {n('missing') or 0:,} missing, {n('extra') or 0:,} extra, "
                      f"{n('class_flips') or 0:,} class flips.")
    counts = data.get("attribution") if isinstance(data.get("attribution"), dict) else {}
    total = sum(v for v in counts.values() if isinstance(v, (int, float)))
    dominant = data.get("dominant_cause") or (max(counts, key=counts.get) if total else None)
    if dominant and total:
        parts.append(f"Most differences come from {CAUSE_WORDS.get(dominant, dominant)}: "
                     f"{counts.get(dominant, 0):,} of {total:,}.")
    elif total == 0 and n("missing") == 0 and n("extra") == 0:
        parts.append("No differences.")
    warnings = []
    images, replayed = n("images"), n("images_replayed")
    if images is not None and replayed is not None and replayed < images:
        warnings.append(
            f"Only **{replayed} of {images} images were replayed** (decoded tensors are kept for "
            f"the first `alignment.images` images): differences on the other {images - replayed} "
            "images can be attributed only where obvious and otherwise count as 'other'. Raise "
            "`alignment.images` in the matrix to attribute all of them.")
    for lint in data.get("lint") or []:
        if isinstance(lint, dict) and lint.get("message"):
            warnings.append(f"`{lint.get('code', 'lint')}`: {lint['message']}")
    notes = [str(x) for x in data.get("notes") or []]
    return {"headline": " ".join(parts), "warnings": warnings, "notes": notes}
