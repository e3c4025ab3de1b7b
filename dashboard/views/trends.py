"""Trends: one cell's metrics across runs (Store.history), change points marked."""
import pandas as pd
import streamlit as st

from dashboard import charts, context, tables
from dashboard.analysis import CP_RULE, IDENTITY, PICK, cell_values, change_points

TREND_METRICS = ["AP", "AP50", "median ms", "p99 ms", "images/s", "e2e median ms"]


def main() -> None:
    ctx = context.current()
    context.header("Trends", ctx)
    if not ctx.selected:
        st.info("No cells match the filters.")
        return
    keys = list(dict.fromkeys(c.key for c in ctx.selected))
    by_key = {c.key: c for c in ctx.selected}
    key = context.choice("Cell", keys, "cell", help="cells of the chosen run; the same cell "
                         "(model, backend, precision, batch, size, device, NMS) is followed across runs")
    picked = context.choice("Metrics", TREND_METRICS, "metrics", multi=True,
                            placeholder="AP and median ms")
    metrics = [PICK[m] for m in picked or ["AP", "median ms"]]
    cell = by_key[key]
    history = context.load_history(ctx.url, tuple(getattr(cell, k) for k in IDENTITY))
    if not history:
        st.info("This cell has no finished attempt in any run yet.")
        return
    base = pd.DataFrame({
        "run": [f"{h['run_created_at']:%Y-%m-%d %H:%M} · {h['run_id'][-4:]}" for h in history],
        "run_created_at": [h["run_created_at"] for h in history],
        "run_label": [f"{h['run_name']} {h['run_id']} ({(h['git_sha'] or '')[:8] or 'no git'})"
                      for h in history],
        "status": [h["status"] for h in history]})
    values = [cell_values(h) for h in history]
    st.caption(f"**Change-point rule.** {CP_RULE}")
    if len(history) <= 3:
        st.info(f"{len(history)} run(s) with this cell so far: change points need at least 4.")
    marked = []
    for metric in metrics:
        series = [v[metric] if h["status"] == "ok" else None for v, h in zip(values, history)]
        cp = change_points(series)
        hist = pd.concat([base, cp], axis=1)
        st.plotly_chart(charts.trend_chart(hist, metric), key=f"trend-{metric}")
        marked += [(metric, r.run_label, r.value, r.center) for r in hist.itertuples() if r.change]
    if marked:
        st.warning("Change points: " + "; ".join(
            f"{m} = {v:.4g} in {label} (previous median {c:.4g})" for m, label, v, c in marked))
    table = base.drop(columns=["run_created_at"]).assign(**{m: [v[m] for v in values] for m in metrics})
    tables.show(list(table.columns), tables.frame_rows(table, list(table.columns)))


main()
