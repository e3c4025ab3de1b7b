"""Run details: environment and provenance, NVML telemetry over time, raw latency samples."""
import pandas as pd
import streamlit as st

from dashboard import charts, context


def main() -> None:
    ctx = context.current()
    context.header("Run details", ctx)
    run = ctx.run

    st.subheader("Run")
    info = {"id": run.id, "name": run.name, "status": run.status,
            "created": f"{run.created_at:%Y-%m-%d %H:%M:%S} UTC",
            "finished": f"{run.finished_at:%Y-%m-%d %H:%M:%S} UTC" if run.finished_at else "—",
            "git sha": run.git_sha or "—", "detbench": run.detbench_version,
            "matrix": run.matrix_path or "—", "matrix hash": run.matrix_hash}
    st.dataframe(pd.DataFrame({"field": list(info), "value": list(info.values())}), hide_index=True)
    left, right = st.columns(2)
    with left.expander("environment", expanded=True):
        st.json(run.environment, expanded=1)
    with right.expander("matrix YAML"):
        st.code(run.matrix_yaml, language="yaml")

    if not ctx.selected:
        st.info("No cells match the filters.")
        return
    st.subheader("Cell")
    by_key = {c.key: c for c in ctx.selected}
    key = context.choice("Cell", list(by_key), "cell")
    cell = by_key[key]
    st.caption(f"status **{cell.status}**" + (f" at stage `{cell.stage}`" if cell.stage else "")
               + (f" · {cell.duration_s:.1f} s" if cell.duration_s else ""))
    if cell.error:
        st.code(cell.error, language=None)
    for warning in cell.warnings or []:
        st.warning(warning)
    summary = pd.DataFrame({"model": _readable(cell.latency), "e2e": _readable(cell.latency_e2e)})
    left, right = st.columns(2)
    with left:
        st.markdown("**latency summary** (ms / batch)")
        if summary.empty:
            st.caption("no latency measured")
        else:
            st.dataframe(summary.fillna("—"), height=300)
    with right:
        st.markdown("**accuracy**")
        metrics = {k: v for k, v in (cell.metrics or {}).items() if not isinstance(v, (dict, list))}
        if metrics:
            st.dataframe(pd.DataFrame({"metric": list(metrics),
                                       "value": [_num(v) for v in metrics.values()]}),
                         hide_index=True, height=300)
        else:
            st.caption("no accuracy measured")

    stage_times = getattr(cell, "stage_times", None) or {}
    if stage_times:
        st.markdown("**stage times** (wall seconds in the cell's worker)")
        st.dataframe(pd.DataFrame({"stage": list(stage_times),
                                   "seconds": [_num(v) for v in stage_times.values()]}),
                     hide_index=True)
    region = (cell.latency or {}).get("region_text")
    if region:
        st.caption(f"model time = {region}")

    with st.expander("provenance", expanded=False):
        st.json(cell.provenance or {}, expanded=1)
    with st.expander("parameters"):
        st.json(cell.params or {}, expanded=1)
    if cell.log_tail:
        with st.expander("log tail"):
            st.code(cell.log_tail, language=None)

    st.subheader("NVML telemetry")
    samples = context.load_telemetry(ctx.url, cell.id)
    if samples:
        st.plotly_chart(charts.telemetry_chart(samples), key="telemetry")
    else:
        st.info("No NVML telemetry for this cell (CPU cells have none; GPU cells need nvidia-ml-py).")
    if cell.telemetry:
        with st.expander("telemetry summary"):
            st.json(cell.telemetry)

    st.subheader("Raw latency samples")
    series = {k: v for k, v in context.load_samples(ctx.url, cell.id).items() if v}
    st.plotly_chart(charts.latency_histogram(series), key="latency-hist")
    if series:
        st.plotly_chart(charts.latency_sequence(series), key="latency-seq")

    class_ap = context.load_class_ap(ctx.url, cell.id)
    if class_ap:
        st.subheader("Per-class AP")
        st.plotly_chart(charts.class_ap_bars(class_ap), key="class-ap")


def _num(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return "—" if value is None else str(value)


def _readable(summary: dict | None) -> dict:
    return {k: _num(v) for k, v in (summary or {}).items()}


main()
