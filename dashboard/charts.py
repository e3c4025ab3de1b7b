"""Plotly figures for the dashboard: plain functions from DataFrames/lists to figures."""
from __future__ import annotations

import math

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.analysis import LOWER_IS_BETTER, METRICS, metric_label

STATUS_CODES = {"ok": 0, "skipped": 1, "pending": 2, "running": 3, "failed": 4}
#: one fixed colour per backend · precision, the same in every chart and table, whatever the
#: filters: a hue per backend (PyTorch grey, the reference; ONNX Runtime blue; TensorRT green),
#: darker for wider types.  Unknown pairs get a stable colour from :data:`EXTRA_COLORS`.
CONFIG_COLORS = {
    "pytorch · fp32": "#24292f", "pytorch · bf16": "#6e7781", "pytorch · fp16": "#8c959f",
    "pytorch · int8": "#afb8c1",
    "onnxruntime · fp32": "#0a3069", "onnxruntime · bf16": "#0550ae", "onnxruntime · fp16": "#218bff",
    "onnxruntime · int8": "#80ccff",
    "tensorrt · fp32": "#044f1e", "tensorrt · bf16": "#116329", "tensorrt · fp16": "#2da44e",
    "tensorrt · int8": "#6fdd8b",
}
EXTRA_COLORS = ("#bc4c00", "#8250df", "#bf3989", "#9a6700", "#cf222e", "#1b7c83")
#: marker symbol per batch size (in order of the run's batch sizes); open symbols for in-graph NMS
BATCH_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "star", "hexagon", "cross", "x")
STATUS_COLORS = ["#2da44e", "#bf8700", "#8c959f", "#0969da", "#cf222e"]
_MARGIN = dict(l=10, r=10, t=40, b=10)


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, height=240,
                      margin=_MARGIN)
    return fig


def config_color(config: str) -> str:
    """The colour of one ``backend · precision`` (stable across pages, filters and runs)."""
    if config in CONFIG_COLORS:
        return CONFIG_COLORS[config]
    import zlib

    return EXTRA_COLORS[zlib.crc32(config.encode()) % len(EXTRA_COLORS)]


def color_map(configs) -> dict[str, str]:
    return {c: config_color(c) for c in configs}


def symbol_of(batch: int, nms: str, batches) -> str:
    """Marker symbol: the shape says the batch size, an open marker an in-graph NMS."""
    ordered = sorted(set(batches))
    shape = BATCH_SYMBOLS[ordered.index(batch) % len(BATCH_SYMBOLS)] if batch in ordered else "circle"
    return shape if nms in ("none", None) else f"{shape}-open"


def _order_cols(frame: pd.DataFrame) -> list[str]:
    ordered = frame.sort_values(["batch", "imgsz"])["col"]
    return list(dict.fromkeys(ordered))


HEAT_TITLES = {
    "speedup": "speed-up over the PyTorch fp32 cell of the same batch (×) — higher is better",
    "dAP": "ΔAP vs the PyTorch fp32 cell of the same batch — 0 is no loss",
    "ms_per_image": "median model latency per image (ms) — lower is better",
}


def matrix_heatmap(frame: pd.DataFrame, value: str) -> go.Figure:
    """Rows model · backend · precision, columns batch · imgsz; ``value`` is ``status``,
    ``speedup`` (log-scaled colour, 1× white), ``dAP`` (diverging around 0, at least ±0.01 AP
    so a tiny gap isn't painted as a big one) or a column of :data:`METRICS`.  Every cell's
    text gives its latency per image, speed-up and ΔAP (blank where missing)."""
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
                continue
            v = cell[value] if value in cell else None
            ok = _ok(v)
            if value == "speedup":
                zr.append(math.log2(v) if ok and v > 0 else None)
            else:
                zr.append(float(v) if ok else None)
            tr.append(_cell_text(cell) if cell["status"] == "ok" else cell["status"])
        z.append(zr)
        text.append(tr)
    height = max(260, 70 + 54 * len(rows))
    common = dict(z=z, x=cols, y=rows, text=text, texttemplate="%{text}", xgap=2, ygap=2,
                  hovertemplate="%{y}<br>%{x}<br>%{text}<extra></extra>", textfont=dict(size=11))
    if value == "status":
        n = len(STATUS_COLORS)
        scale = []
        for i, color in enumerate(STATUS_COLORS):
            scale += [(i / n, color), ((i + 1) / n, color)]
        trace = go.Heatmap(**common, colorscale=scale, zmin=-0.5, zmax=n - 0.5, showscale=False)
        title = "cell status"
    elif value == "speedup":
        finite = [abs(v) for row in z for v in row if v is not None]
        span = max([1.0, *finite])
        ticks = [t for t in (-3, -2, -1, 0, 1, 2, 3, 4) if abs(t) <= span + 1e-9]
        trace = go.Heatmap(**common, colorscale="RdBu", zmid=0, zmin=-span, zmax=span,
                           colorbar=dict(title="×", tickvals=ticks, ticktext=[f"{2 ** t:g}×" for t in ticks]))
        title = HEAT_TITLES["speedup"]
    elif value == "dAP":
        finite = [abs(v) for row in z for v in row if v is not None]
        span = max([0.01, *finite])
        trace = go.Heatmap(**common, colorscale="RdBu", zmid=0, zmin=-span, zmax=span,
                           colorbar=dict(title="ΔAP", tickformat="+.3f"))
        title = HEAT_TITLES["dAP"]
    else:
        reverse = value in LOWER_IS_BETTER
        trace = go.Heatmap(**common, colorscale="Viridis_r" if reverse else "Viridis",
                           colorbar=dict(title=value))
        title = HEAT_TITLES.get(value) or (metric_label(value, frame)
                                           + (" — lower is better" if reverse else ""))
    fig = go.Figure(trace)
    fig.update_layout(title=dict(text=title, font=dict(size=14), y=0.99, yanchor="top"),
                      height=height + 30, margin=dict(_MARGIN, t=90),
                      yaxis=dict(autorange="reversed", type="category", automargin=True),
                      xaxis=dict(type="category", side="top"))
    return fig


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _cell_text(cell) -> str:
    """``1.64 ms/img<br>2.47×<br>ΔAP +0.0003``: what the heatmap writes in an ok cell (three
    short lines, so narrow columns still show everything)."""
    parts = []
    if _ok(cell.get("ms_per_image")):
        parts.append(f"{_fmt(cell['ms_per_image'], 'ms')} ms/img")
    if _ok(cell.get("speedup")):
        parts.append(f"{cell['speedup']:.2f}×")
    if _ok(cell.get("dAP")):
        parts.append(f"ΔAP {cell['dAP']:+.4f}")
    elif _ok(cell.get("AP")):
        parts.append(f"AP {cell['AP']:.3f}")
    return "<br>".join(parts) or "ok"


def pareto_scatter(frame: pd.DataFrame, front: pd.DataFrame, x: str, y: str, *,
                   log_x: bool = False) -> go.Figure:
    """Every ok cell as a point: colour = backend · precision (:func:`config_color`), symbol =
    batch size (open when NMS runs in the graph), red outline = unstable latency; hover gives
    the numbers formatted with speed-up and ΔAP.  The frontier (lower ``x``, higher ``y``) is
    a dashed step line through its points."""
    data = frame.dropna(subset=[x, y])
    if data.empty:
        return _empty("latency vs accuracy", "no ok cells with both latency and AP")
    batches = sorted(set(data["batch"]))
    fig = go.Figure()
    for config, part in data.groupby("config", sort=False):
        fig.add_trace(go.Scatter(  # the legend entry: the colour alone, whatever the points' shapes
            x=[None], y=[None], mode="markers", name=config, legendgroup=config,
            marker=dict(size=11, color=config_color(config), symbol="circle")))
        fig.add_trace(go.Scatter(
            x=part[x], y=part[y], mode="markers", name=config, legendgroup=config, showlegend=False,
            marker=dict(size=12, color=config_color(config),
                        symbol=[symbol_of(b, n, batches) for b, n in zip(part["batch"], part["nms"])],
                        line=dict(width=[2.5 if u else 1 for u in part["unstable"].fillna(False)],
                                  color=["#cf222e" if u else "white"
                                         for u in part["unstable"].fillna(False)])),
            customdata=[[k, _num(m, "ms"), _num(t, "ips"), _num(a, "AP"), _signed(d), _pct(dp),
                         _times(sp), b, n, "yes" if u else "no"]
                        for k, m, t, a, d, dp, sp, b, n, u in zip(
                            part["key"], part["ms_per_image"], part["throughput_ips"], part["AP"],
                            part["dAP"], part["dAP_pct"], part["speedup"], part["batch"], part["nms"],
                            part["unstable"].fillna(False))],
            hovertemplate=("<b>%{customdata[0]}</b><br>%{customdata[1]} ms per image · "
                           "%{customdata[2]} images/s<br>AP %{customdata[3]} · ΔAP %{customdata[4]} "
                           "(%{customdata[5]})<br>speed-up %{customdata[6]} vs PyTorch fp32<br>"
                           "batch %{customdata[7]} · NMS %{customdata[8]} · unstable latency: "
                           "%{customdata[9]}<extra></extra>")))
    for b in batches:  # legend entries for the symbols
        for nms in sorted(set(data.loc[data["batch"] == b, "nms"])):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", legendgroup="symbols",
                                     name=f"batch {b}" + ("" if nms == "none" else f" · NMS {nms}"),
                                     marker=dict(size=10, color="#57606a",
                                                 symbol=symbol_of(b, nms, batches))))
    if not front.empty:
        fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines+markers", name="Pareto frontier",
                                 line=dict(dash="dash", color="#57606a", shape="hv"),
                                 marker=dict(size=18, symbol="circle-open", color="#57606a"),
                                 hovertext=front["key"], hoverinfo="text"))
    fig.update_layout(title="latency vs accuracy (frontier: nothing faster is as accurate)",
                      height=480, margin=_MARGIN, legend=dict(title=None, font=dict(size=11)),
                      xaxis=dict(title=metric_label(x, data) + (" — log scale" if log_x else ""),
                                 type="log" if log_x else "linear"),
                      yaxis=dict(title=metric_label(y, data), tickformat=".3f"))
    return fig


def throughput_lines(frame: pd.DataFrame) -> go.Figure:
    """Images/s against batch size, one line per model · backend · precision · size (· NMS),
    coloured by backend · precision like every other chart."""
    data = frame.dropna(subset=["throughput_ips"]).sort_values(["series", "batch"])
    if data.empty:
        return _empty("throughput vs batch", "no ok cells with a throughput")
    fig = go.Figure()
    dashes = ("solid", "dot", "dash", "dashdot", "longdash")
    models = list(dict.fromkeys(data["model"]))
    for series, part in data.groupby("series", sort=False):
        config = part["config"].iloc[0]
        fig.add_trace(go.Scatter(
            x=part["batch"].astype(str), y=part["throughput_ips"], mode="lines+markers", name=series,
            line=dict(color=config_color(config),
                      dash=dashes[models.index(part["model"].iloc[0]) % len(dashes)]),
            marker=dict(size=8, symbol=["circle" if n == "none" else "circle-open" for n in part["nms"]]),
            customdata=[[k, _num(v, "ips")] for k, v in zip(part["key"], part["throughput_ips"])],
            hovertemplate="%{customdata[0]}<br>%{customdata[1]} images/s<extra></extra>"))
    fig.update_xaxes(type="category", title="batch size")
    fig.update_layout(title="throughput vs batch size", height=420, margin=_MARGIN,
                      yaxis_title=METRICS["throughput_ips"], legend=dict(font=dict(size=11)))
    return fig


def _num(v, kind: str) -> str:
    if not _ok(v):
        return "—"
    if kind == "AP":
        return f"{v:.4f}"
    return _fmt(v, kind)


def _signed(v) -> str:
    return f"{v:+.4f}" if _ok(v) else "—"


def _pct(v) -> str:
    return f"{v:+.2f} %" if _ok(v) else "—"


def _times(v) -> str:
    return f"{v:.2f}×" if _ok(v) else "—"


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
        fig.add_trace(go.Scatter(x=data["t_s"], y=data[key], mode="lines", name=lbl,
                                 hovertemplate="%{x:.2f} s: %{y:,.1f}<extra></extra>"), row=i, col=1)
        lo, hi = float(data[key].min()), float(data[key].max())
        pad = max(1.0, 0.02 * max(abs(lo), abs(hi)))
        if hi - lo < pad:  # a flat signal: a sane axis instead of ticks at ±0.5 of one value
            mid = (lo + hi) / 2
            fig.update_yaxes(range=[mid - 2 * pad, mid + 2 * pad], row=i, col=1)
        fig.update_yaxes(tickformat=",.0f" if max(abs(lo), abs(hi)) >= 10 else ",.1f", nticks=4,
                         row=i, col=1)
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
    palette = {"model": "#0969da", "e2e": "#bc4c00"}
    fig = px.histogram(data, x="ms", color="series", barmode="overlay", nbins=40, opacity=0.6,
                       labels={"ms": "latency (ms / batch)"}, color_discrete_map=palette)
    for name, values in series.items():
        if values:  # medians as lines named in the legend: labels on the plot overlap
            med = float(pd.Series(values).median())
            fig.add_vline(x=med, line_dash="dot", line_color=palette.get(name, "#57606a"))
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"{name} median {med:.2f} ms",
                                     line=dict(dash="dot", color=palette.get(name, "#57606a"))))
    fig.update_layout(title="raw latency samples", height=360, margin=_MARGIN,
                      legend=dict(orientation="h", y=-0.25, title=None))
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


def class_delta_bars(rows: list[dict]) -> go.Figure:
    """Per-class ΔAP (cell − reference), worst first; red for a loss, blue for a gain."""
    data = pd.DataFrame(rows)
    if data.empty or "ap_delta" not in data:
        return _empty("per-class ΔAP", "no per-class ΔAP stored")
    data = data.dropna(subset=["ap_delta"]).sort_values("ap_delta", ascending=False)
    fig = go.Figure(go.Bar(x=data["ap_delta"], y=data["class_name"], orientation="h",
                           marker_color=["#cf222e" if v < 0 else "#0969da" for v in data["ap_delta"]],
                           customdata=[[_num(a, "AP"), _num(r, "AP")] for a, r in
                                       zip(data.get("ap", data["ap_delta"]), data.get("ap_ref", data["ap_delta"]))],
                           hovertemplate="%{y}: ΔAP %{x:+.4f}<br>AP %{customdata[0]} (reference "
                                         "%{customdata[1]})<extra></extra>"))
    fig.update_layout(title="per-class ΔAP vs the reference", height=max(220, 26 * len(data) + 90),
                      margin=_MARGIN, xaxis=dict(title="ΔAP", tickformat="+.3f", zeroline=True))
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
