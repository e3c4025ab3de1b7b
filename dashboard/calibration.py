"""The int8 calibration study of a run: AP per calibration method × calibration set size.

Each point is an ordinary stored int8 cell (a matrix whose ``calibration.method`` /
``calibration.images`` are lists expands into one cell per point, see
``harness.matrix.expand``); this module reads them from ``CellRecord``s (the store's API) and
draws AP against the calibration set size, one line per method, with the float baselines.
Pure functions: no Streamlit here.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

METHODS = ("minmax", "entropy", "percentile", "mse")
METHOD_COLORS = {"minmax": "#0969da", "entropy": "#bf3989", "percentile": "#1a7f37", "mse": "#bc4c00"}
#: what one line of the study holds constant
GROUP = ("model", "backend", "precision", "batch", "imgsz", "device", "nms")
COLUMNS = ["key", *GROUP, "status", "method", "images", "images_asked", "AP", "AP50", "dAP_fp32",
           "fp32_AP", "scales_sha256"]


def _point(cell) -> tuple[str | None, int | None, int | None]:
    """(method that ran, images it calibrated on, images asked): provenance first, then the plan."""
    asked = (cell.params or {}).get("calibration") or {}
    prov = cell.provenance or {}
    images = prov.get("calibration_images", asked.get("images"))
    return prov.get("calibration_method", asked.get("method")), images, asked.get("images")


def _float_baseline(cell, cells):
    """The ``ok`` fp32 cell of the same backend and axes: the int8 graph's own float version."""
    same = [c for c in cells if c.precision == "fp32" and c.status == "ok"
            and all(getattr(c, k) == getattr(cell, k) for k in GROUP if k != "precision")]
    return same[0] if same else None


def study_frame(cells) -> pd.DataFrame:
    """One row per int8 / int8-mixed cell of a run that has a calibration point; only the groups
    (:data:`GROUP`) with at least two points are a study, the others are dropped."""
    rows = []
    for c in cells:
        if c.precision not in ("int8", "int8-mixed"):
            continue
        method, images, asked = _point(c)
        if method is None or images is None:
            continue
        ap = (c.metrics or {}).get("AP") if c.status == "ok" else None
        base = _float_baseline(c, cells)
        base_ap = (base.metrics or {}).get("AP") if base is not None else None
        rows.append({"key": c.key, **{k: getattr(c, k) for k in GROUP}, "status": c.status,
                     "method": method, "images": int(images), "images_asked": asked, "AP": ap,
                     "AP50": (c.metrics or {}).get("AP50") if c.status == "ok" else None,
                     "dAP_fp32": None if ap is None or base_ap is None else ap - base_ap,
                     "fp32_AP": base_ap, "scales_sha256": (c.provenance or {}).get("scales_sha256")})
    frame = pd.DataFrame.from_records(rows, columns=COLUMNS)
    if frame.empty:
        return frame
    points = frame.groupby(list(GROUP))["key"].transform("count")
    return frame[points > 1].reset_index(drop=True)


def group_label(row) -> str:
    return " · ".join(str(row[k]) for k in ("backend", "precision")) + f" · b{row['batch']} · {row['imgsz']}px"


def same_scales(frame: pd.DataFrame) -> list[str]:
    """Sentences for methods that chose identical scales at the same size (a silent no-op)."""
    out = []
    done = frame.dropna(subset=["scales_sha256"])
    for (label, images), part in done.groupby([done.apply(group_label, axis=1), "images"]):
        for sha, same in part.groupby("scales_sha256"):
            if len(same) > 1:
                out.append(f"{label}, {images} images: {', '.join(sorted(same['method']))} chose "
                           "identical scales — the methods did not differ there")
    return out


def pivot(frame: pd.DataFrame, value: str = "AP") -> pd.DataFrame:
    """Methods (rows, in :data:`METHODS` order) × calibration images (columns) of one value;
    several groups get their label as the first level of the rows."""
    data = frame.assign(group=frame.apply(group_label, axis=1))
    table = data.pivot_table(index=["group", "method"], columns="images", values=value, aggfunc="first")
    order = {m: i for i, m in enumerate(METHODS)}
    table = table.sort_index(key=lambda idx: idx.map(lambda v: order.get(v, len(order)))
                             if idx.name == "method" else idx)
    table.columns = [f"{c} images" for c in table.columns]
    return table.reset_index() if data["group"].nunique() > 1 else table.droplevel("group").reset_index()


def study_figure(frame: pd.DataFrame, reference_ap: dict[str, float] | None = None) -> go.Figure:
    """AP against calibration set size (log axis), one line per method (and group when the run
    sweeps several); dashed: the same backend's fp32 AP; dotted: ``reference_ap`` (label → AP,
    e.g. PyTorch fp32)."""
    fig = go.Figure()
    data = frame.dropna(subset=["AP"]).assign(group=lambda f: f.apply(group_label, axis=1))
    groups = list(dict.fromkeys(data["group"]))
    dashes = ("solid", "dash", "dot", "dashdot")
    for gi, group in enumerate(groups):
        part = data[data["group"] == group]
        for method in [m for m in METHODS if m in set(part["method"])] + \
                sorted(set(part["method"]) - set(METHODS)):
            line = part[part["method"] == method].sort_values("images")
            name = method if len(groups) == 1 else f"{method} · {group}"
            fig.add_trace(go.Scatter(
                x=line["images"].tolist(), y=line["AP"].tolist(), mode="lines+markers", name=name,
                line=dict(color=METHOD_COLORS.get(method, "#57606a"), dash=dashes[gi % len(dashes)]),
                customdata=line[["dAP_fp32", "key"]].values.tolist(),
                hovertemplate=(f"{name}<br>%{{x}} calibration images<br>AP %{{y:.4f}}"
                               "<br>ΔAP vs fp32 %{customdata[0]:+.4f}<br>%{customdata[1]}<extra></extra>")))
        base = part["fp32_AP"].dropna()
        if not base.empty:
            fig.add_hline(y=float(base.iloc[0]), line=dict(color="#24292f", dash="dash", width=1),
                          annotation_text=f"fp32 {part['backend'].iloc[0]} {base.iloc[0]:.4f}",
                          annotation_position="bottom right")
    for label, ap in (reference_ap or {}).items():
        fig.add_hline(y=ap, line=dict(color="#6e7781", dash="dot", width=1),
                      annotation_text=f"{label} {ap:.4f}", annotation_position="top left")
    sizes = sorted(set(data["images"]))
    fig.update_layout(title="int8 AP vs calibration method and calibration set size",
                      xaxis=dict(title="calibration images", type="log", tickvals=sizes,
                                 ticktext=[str(s) for s in sizes]),
                      yaxis=dict(title="AP (COCO 0.50:0.95)", tickformat=".3f"),
                      legend=dict(title="method"), height=420, margin=dict(l=10, r=10, t=50, b=10))
    return fig
