"""The Trends page's figure: several cells' series over runs, change markers and
acknowledgements (a module of its own, beside ``dashboard.charts``)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dashboard.analysis import METRICS, ROTATED_METRICS

_MARGIN = dict(l=10, r=10, t=40, b=10)
_COLORS = ["#0969da", "#bf3989", "#1a7f37", "#bc4c00", "#8250df", "#57606a", "#0550ae", "#953800"]


def overlay_chart(frames: dict[str, pd.DataFrame], metric: str, marks: dict[str, list[int]],
                  acks: list[dict], rotated: bool = False) -> go.Figure:
    """``frames``: label -> a series frame (``run``, ``run_created_at``, ``metric``);
    ``marks``: label -> row positions of change points; ``acks``: rows with ``run`` and
    ``reason``.  Runs are evenly spaced categories in time order (a night's runs are
    seconds apart).  ``rotated``: the cells' AP is rotated-IoU AP (#19), labelled so."""
    label = (ROTATED_METRICS.get(metric) if rotated else None) or METRICS.get(metric, metric)
    fig = go.Figure()
    order = (pd.concat([f[["run", "run_created_at"]] for f in frames.values() if not f.empty])
             .drop_duplicates("run").sort_values("run_created_at")["run"].tolist()
             if frames else [])
    for i, (name, frame) in enumerate(frames.items()):
        if frame.empty or metric not in frame:
            continue
        data = frame.dropna(subset=[metric])
        color = _COLORS[i % len(_COLORS)]
        fig.add_trace(go.Scatter(x=data["run"], y=data[metric], mode="lines+markers", name=name,
                                 line=dict(color=color), customdata=data[["git_sha", "status"]],
                                 hovertemplate="%{x}<br>%{y:.4g}<br>git %{customdata[0]}"
                                               "<extra>" + name + "</extra>"))
        changed = frame.iloc[marks.get(name, [])]
        if not changed.empty:
            fig.add_trace(go.Scatter(x=changed["run"], y=changed[metric], mode="markers",
                                     name=f"change · {name}", showlegend=len(frames) > 1 or i == 0,
                                     marker=dict(symbol="x", size=14, color="#cf222e"),
                                     hovertemplate="change point<br>%{x}<br>%{y:.4g}<extra></extra>"))
    for ack in acks:
        if ack["run"] in order:
            fig.add_vline(x=order.index(ack["run"]), line=dict(color="#8c959f", dash="dot"))
            fig.add_annotation(x=ack["run"], y=1.0, yref="paper", text=f"ack: {ack['reason'][:40]}",
                               showarrow=False, yanchor="bottom", font=dict(size=10))
    if not fig.data:
        fig.add_annotation(text="no finished values", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=order)
    fig.update_layout(title=label, height=420, margin=_MARGIN, xaxis_title="run (created UTC · id)",
                      yaxis_title=label, legend=dict(orientation="h", y=-0.45, yanchor="top"))
    return fig
