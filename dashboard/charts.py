"""Plotly figures for the dashboard: plain functions from DataFrames/lists to figures."""
from __future__ import annotations

import math

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.analysis import LOWER_IS_BETTER, METRICS

STATUS_CODES = {"ok": 0, "skipped": 1, "pending": 2, "running": 3, "failed": 4}
STATUS_COLORS = ["#2da44e", "#bf8700", "#8c959f", "#0969da", "#cf222e"]
_MARGIN = dict(l=10, r=10, t=40, b=10)


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, height=240,
                      margin=_MARGIN)
    return fig


def _order_cols(frame: pd.DataFrame) -> list[str]:
    ordered = frame.sort_values(["batch", "imgsz"])["col"]
    return list(dict.fromkeys(ordered))


def matrix_heatmap(frame: pd.DataFrame, value: str) -> go.Figure:
    """Rows model · backend · precision, columns batch · imgsz; ``value`` is ``status`` or a
    column of :data:`METRICS` (cells without a value are blank)."""
    if frame.empty:
        return _empty("matrix", "no cells match the filters")
    rows = list(dict.fromkeys(frame["row"]))
    cols = _order_cols(frame)
    first = frame.drop_duplicates(["row", "col"]).set_index(["row", "col"])
    z, text = [], []
    for r in rows:
        zr, tr = [], []
        for c in cols:
            if (r, c) not in first.index:
                zr.append(None)
                tr.append("")
                continue
            cell = first.loc[(r, c)]
            if value == "status":
                zr.append(STATUS_CODES.get(cell["status"], 2))
                tr.append(cell["status"] + (f" ({cell['stage']})" if cell["status"] == "failed"
                                            and cell["stage"] else ""))
            else:
                v = cell[value]
                ok = v is not None and not (isinstance(v, float) and math.isnan(v))
                zr.append(float(v) if ok else None)
                tr.append(_fmt(v, value) if ok else cell["status"])
        z.append(zr)
        text.append(tr)
    height = max(260, 60 + 42 * len(rows))
    if value == "status":
        n = len(STATUS_COLORS)
        scale = []
        for i, color in enumerate(STATUS_COLORS):
            scale += [(i / n, color), ((i + 1) / n, color)]
        trace = go.Heatmap(z=z, x=cols, y=rows, text=text, texttemplate="%{text}",
                           colorscale=scale, zmin=-0.5, zmax=n - 0.5, showscale=False,
                           hovertemplate="%{y}<br>%{x}<br>%{text}<extra></extra>", xgap=2, ygap=2)
        title = "cell status"
    else:
        reverse = value in LOWER_IS_BETTER
        trace = go.Heatmap(z=z, x=cols, y=rows, text=text, texttemplate="%{text}",
                           colorscale="Viridis_r" if reverse else "Viridis",
                           colorbar=dict(title=value), xgap=2, ygap=2,
                           hovertemplate="%{y}<br>%{x}<br>%{text}<extra></extra>")
        title = METRICS.get(value, value) + (" — lower is better" if reverse else "")
    fig = go.Figure(trace)
    fig.update_layout(title=title, height=height, margin=_MARGIN,
                      yaxis=dict(autorange="reversed", type="category"),
                      xaxis=dict(type="category", side="top"))
    return fig


def pareto_scatter(frame: pd.DataFrame, front: pd.DataFrame, x: str, y: str) -> go.Figure:
    """Every ok cell as a point coloured by backend · precision (symbol: model), the frontier
    (lower ``x``, higher ``y``) as a dashed step line through its points."""
    data = frame.dropna(subset=[x, y])
    if data.empty:
        return _empty("latency vs accuracy", "no ok cells with both latency and AP")
    fig = px.scatter(data, x=x, y=y, color="config", symbol="model",
                     hover_data={"key": True, "batch": True, "imgsz": True, "config": False},
                     labels={x: METRICS.get(x, x), y: METRICS.get(y, y), "config": "backend · precision"})
    fig.update_traces(marker=dict(size=11, line=dict(width=1, color="white")))
    if not front.empty:
        fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines+markers", name="Pareto frontier",
                                 line=dict(dash="dash", color="#57606a", shape="hv"),
                                 marker=dict(size=16, symbol="circle-open", color="#57606a"),
                                 hovertext=front["key"], hoverinfo="text"))
    fig.update_layout(title="latency vs accuracy (frontier: nothing faster is as accurate)",
                      height=460, margin=_MARGIN, legend=dict(title=None))
    return fig


def throughput_lines(frame: pd.DataFrame) -> go.Figure:
    data = frame.dropna(subset=["throughput_ips"]).sort_values(["series", "batch"])
    if data.empty:
        return _empty("throughput vs batch", "no ok cells with a throughput")
    fig = px.line(data, x="batch", y="throughput_ips", color="series", markers=True,
                  hover_data={"key": True},
                  labels={"throughput_ips": METRICS["throughput_ips"], "batch": "batch size",
                          "series": "model · backend · precision · size"})
    fig.update_xaxes(type="category")
    fig.update_layout(title="throughput vs batch size", height=420, margin=_MARGIN)
    return fig


def trend_chart(hist: pd.DataFrame, metric: str) -> go.Figure:
    """``hist`` has run (x-axis label, oldest first), run_label (hover), value, lower, upper,
    center, change.  Runs are evenly spaced categories: runs of one night are seconds apart."""
    label = METRICS.get(metric, metric)
    data = hist.dropna(subset=["value"])
    if data.empty:
        return _empty(label, "no finished values for this cell")
    fig = go.Figure()
    band = data.dropna(subset=["lower", "upper"])
    if not band.empty:
        fig.add_trace(go.Scatter(x=band["run"], y=band["upper"], mode="lines",
                                 line=dict(width=0), showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=band["run"], y=band["lower"], mode="lines",
                                 line=dict(width=0), fill="tonexty", fillcolor="rgba(9,105,218,0.12)",
                                 name="median ± 3·MAD of previous runs", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=data["run"], y=data["value"], mode="lines+markers",
                             name=metric, line=dict(color="#0969da"), text=data["run_label"],
                             hovertemplate="%{text}<br>%{y:.4g}<extra></extra>"))
    changed = data[data["change"]]
    if not changed.empty:
        fig.add_trace(go.Scatter(x=changed["run"], y=changed["value"], mode="markers",
                                 name="change point", text=changed["run_label"],
                                 marker=dict(symbol="x", size=14, color="#cf222e"),
                                 hovertemplate="change: %{text}<br>%{y:.4g}<extra></extra>"))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=list(hist["run"]))
    fig.update_layout(title=label, height=340, margin=_MARGIN, xaxis_title="run (created UTC · id)",
                      yaxis_title=label, legend=dict(orientation="h", y=-0.3))
    return fig


TELEMETRY_PANELS = (("power_w", "power (W)"), ("sm_clock_mhz", "SM clock (MHz)"),
                    ("mem_clock_mhz", "memory clock (MHz)"), ("temp_c", "temperature (°C)"),
                    ("gpu_util", "GPU utilisation (%)"), ("mem_used_mb", "memory used (MB)"))


def telemetry_chart(samples: list[dict]) -> go.Figure:
    data = pd.DataFrame(samples)
    panels = [(k, lbl) for k, lbl in TELEMETRY_PANELS if k in data and data[k].notna().any()]
    if data.empty or not panels:
        return _empty("NVML telemetry", "no telemetry samples")
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True,
                        subplot_titles=[lbl for _, lbl in panels], vertical_spacing=0.06)
    for i, (key, lbl) in enumerate(panels, start=1):
        fig.add_trace(go.Scatter(x=data["t_s"], y=data[key], mode="lines", name=lbl), row=i, col=1)
    fig.update_xaxes(title_text="time in timed loop (s)", row=len(panels), col=1)
    fig.update_layout(height=150 * len(panels) + 80, showlegend=False, margin=_MARGIN,
                      title="NVML telemetry during the timed loop")
    return fig


def latency_histogram(series: dict[str, list[float]]) -> go.Figure:
    """Raw per-iteration latencies of each series (``model``, ``e2e``), overlaid, medians marked."""
    rows = [{"series": name, "ms": v} for name, values in series.items() for v in values]
    if not rows:
        return _empty("raw latency samples", "no latency samples stored for this cell")
    data = pd.DataFrame(rows)
    fig = px.histogram(data, x="ms", color="series", barmode="overlay", nbins=40, opacity=0.7,
                       labels={"ms": "latency (ms / batch)"})
    for name, values in series.items():
        if values:
            med = float(pd.Series(values).median())
            fig.add_vline(x=med, line_dash="dot", annotation_text=f"{name} median {med:.2f}",
                          annotation_position="top right")
    fig.update_layout(title="raw latency samples", height=360, margin=_MARGIN)
    return fig


def latency_sequence(series: dict[str, list[float]]) -> go.Figure:
    """Samples in measurement order: drift, warm-up left-overs and throttling show up here."""
    fig = go.Figure()
    for name, values in series.items():
        fig.add_trace(go.Scatter(y=values, mode="lines+markers", name=name, marker=dict(size=4)))
    if not any(series.values()):
        return _empty("samples in order", "no latency samples stored for this cell")
    fig.update_layout(title="samples in measurement order", height=300, margin=_MARGIN,
                      xaxis_title="iteration", yaxis_title="ms / batch")
    return fig


def class_ap_bars(rows: list[dict]) -> go.Figure:
    data = pd.DataFrame(rows)
    if data.empty:
        return _empty("per-class AP", "no per-class AP stored")
    data = data.sort_values("ap", ascending=True)
    fig = px.bar(data, x="ap", y="class_name", orientation="h", hover_data=["ap50"],
                 labels={"ap": "AP", "class_name": "class"})
    fig.update_layout(title="per-class AP", height=max(240, 22 * len(data) + 80), margin=_MARGIN)
    return fig


def bars(labels: list, counts: list, title: str, x_title: str = "", y_title: str = "count") -> go.Figure:
    fig = go.Figure(go.Bar(x=[str(v) for v in labels], y=counts, marker_color="#0969da"))
    fig.update_layout(title=title, height=320, margin=_MARGIN, xaxis_title=x_title,
                      yaxis_title=y_title, xaxis_type="category")
    return fig


def value_histogram(values: list[float], title: str, x_title: str) -> go.Figure:
    fig = px.histogram(x=values, nbins=30, labels={"x": x_title})
    fig.update_layout(title=title, height=320, margin=_MARGIN, yaxis_title="count")
    return fig


def _fmt(value, column: str) -> str:
    if column.startswith("AP"):
        return f"{value:.3f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
