"""Trends: cells' series across runs, with the change points and verdicts of
`detbench check`, acknowledgements, and what changed in provenance at each change."""
import pandas as pd
import streamlit as st

from harness import report

from dashboard import context, tables, trend_charts, trends_data
from dashboard.analysis import PICK

TREND_METRICS = ["AP", "AP50", "median ms", "p99 ms", "images/s", "e2e median ms"]
MAX_OVERLAY = 8


@st.cache_data(ttl=60, show_spinner=False)
def _series(url: str, run_id: str, cell_id: int) -> trends_data.Series:
    store = context.open_store(url)
    run = store.get_run(run_id)
    cell = next(c for c in store.cells(run_id) if c.id == cell_id)
    return trends_data.load_series(store, cell, run)


def main() -> None:
    ctx = context.current()
    context.header("Trends", ctx)
    if not ctx.selected:
        st.info("No cells match the filters.")
        return
    keys = list(dict.fromkeys(c.key for c in ctx.selected))
    by_key = {c.key: c for c in ctx.selected}
    key = context.choice("Cell", keys, "cell", help="a cell of the chosen run, followed across "
                         "runs along its series (same model, checkpoint, backend, precision, batch, "
                         "size, NMS, GPU, timing mode, eval settings and dataset)")
    cell = by_key[key]
    same_model = [k for k in keys if by_key[k].model == cell.model and k != key]
    overlay = context.choice("Overlay", [k for k in keys if k != key], "overlay", multi=True,
                             placeholder="other cells to draw on the same charts",
                             max_selections=MAX_OVERLAY - 1)
    if st.toggle("Overlay every cell of this model", key="all_of_model",
                 help=f"{len(same_model)} other cell(s) of {cell.model}"):
        overlay = list(dict.fromkeys([*overlay, *same_model]))[:MAX_OVERLAY - 1]
    picked = context.choice("Metrics", TREND_METRICS, "metrics", multi=True,
                            placeholder="AP and median ms")
    metrics = [PICK[m] for m in picked or ["AP", "median ms"]]
    chosen = [cell, *(by_key[k] for k in overlay)]
    all_series = {c.key: _series(ctx.url, ctx.run.id, c.id) for c in chosen}
    primary = all_series[key]
    if not primary.rows:
        st.info("This cell has no finished attempt in any run yet.")
        return
    st.caption(f"**How to read this.** {trends_data.RULE}")
    frames = {k: s.frame() for k, s in all_series.items()}
    acks = trends_data.ack_rows(primary)
    marked, verdicts = [], []
    for metric in metrics:
        marks = {k: trends_data.markers(frames[k], metric, ctx.run, by_key[k].precision)
                 for k in frames}
        st.plotly_chart(trend_charts.overlay_chart(frames, metric, marks, acks,
                                                   rotated=report.is_rotated(cell)),
                        key=f"trend-{metric}")
        for k, positions in marks.items():
            marked += [(metric, k, p) for p in positions]
            found = trends_data.verdict(all_series[k], metric, ctx.run, by_key[k].precision,
                                        context.open_store(ctx.url))
            if found is not None:
                verdicts.append({"cell": k, "metric": metric, "verdict": found.state,
                                 "change": found.change, "baseline": found.baseline,
                                 "baseline runs": found.baseline_runs})
    _verdicts(verdicts)
    _changes(marked, all_series, frames)
    if acks:
        st.subheader("Acknowledged changes")
        st.dataframe(pd.DataFrame(acks), hide_index=True)
    table = frames[key].drop(columns=["run_created_at"])
    columns = ["run", "run_id", "status", "git_sha", *[m for m in metrics if m in table]]
    tables.show(columns, tables.frame_rows(table, columns))


def _verdicts(rows: list[dict]) -> None:
    bad = [r for r in rows if r["verdict"] in ("suspect", "confirmed")]
    if bad:
        st.error("Newest run: " + "; ".join(f"{r['metric']} of {r['cell']} is **{r['verdict']}**"
                                           for r in bad))
    if rows:
        with st.expander("Verdict of the newest run per cell and metric (as `detbench check`)"):
            st.dataframe(pd.DataFrame(rows), hide_index=True)


def _changes(marked: list, all_series: dict, frames: dict) -> None:
    if not marked:
        return
    st.warning("Change points: " + "; ".join(
        f"{metric} of {k} at {frames[k]['run'].iloc[p]}" for metric, k, p in marked))
    st.subheader("What changed at each change point")
    for metric, k, p in marked:
        diff = trends_data.provenance_at(all_series[k], p)
        frame = frames[k]
        title = f"{metric} · {k} · {frame['run'].iloc[p - 1]} → {frame['run'].iloc[p]}"
        with st.expander(title, expanded=len(marked) == 1):
            if diff:
                st.dataframe(pd.DataFrame(diff), hide_index=True)
            else:
                st.caption("No version, driver, git or host change recorded between these runs.")


main()
