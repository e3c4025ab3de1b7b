"""Run details: environment and provenance, NVML telemetry over time, raw latency samples."""
import pandas as pd
import streamlit as st

from harness import report

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
            "matrix": run.matrix_path or "—", "matrix hash": run.matrix_hash,
            **{k: v for k, v in report.run_header(run, ctx.cells).items()
               if k in ("hardware", "versions", "caveats")}}
    st.dataframe(pd.DataFrame({"field": list(info), "value": list(info.values())}), hide_index=True,
                 height=36 * (len(info) + 1) + 3)  # every field in view, no inner scrolling
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
    summary = _summary(cell.latency, cell.latency_e2e)
    left, right = st.columns(2)
    with left:
        st.markdown("**latency summary** (ms / batch)")
        if summary.empty:
            st.caption("no latency measured")
        else:
            st.dataframe(summary, height=300)
    with right:
        st.markdown("**accuracy**" + (" — rotated IoU (AP / AP50: COCO-style on rotated IoU; "
                                      "mAP50_07 / mAP50_area: DOTA)" if report.is_rotated(cell) else ""))
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
    if cell.telemetry:
        tele = {k: v for k, v in cell.telemetry.items() if not isinstance(v, (dict, list))}
        picks = [("energy / image", "energy_per_image_j", "J"), ("power avg", "power_avg_w", "W"),
                 ("power max", "power_max_w", "W"), ("SM clock avg", "sm_clock_avg_mhz", "MHz"),
                 ("temp max", "temp_max_c", "°C")]
        shown = [(label, tele[k], unit) for label, k, unit in picks if tele.get(k) is not None]
        for col, (label, value, unit) in zip(st.columns(max(1, len(shown))), shown):
            col.metric(label, f"{_num(value)} {unit}")
    samples = context.load_telemetry(ctx.url, cell.id)
    if samples:
        st.plotly_chart(charts.telemetry_chart(samples), key="telemetry")
    else:
        st.info(_no_telemetry(cell))
    if cell.telemetry:
        with st.expander("telemetry summary (all fields)"):
            st.dataframe(pd.DataFrame({"field": list(cell.telemetry),
                                       "value": [_num(v) if not isinstance(v, (dict, list)) else str(v)
                                                 for v in cell.telemetry.values()]}),
                         hide_index=True)

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


def _summary(model: dict | None, e2e: dict | None) -> pd.DataFrame:
    """Model and end-to-end summaries side by side as strings ("—" where one lacks a field):
    filled in Python, so no float column is ever ``fillna``-ed with a string."""
    a, b = _readable(model), _readable(e2e)
    keys = list(dict.fromkeys([*a, *b]))
    return pd.DataFrame({"model": [a.get(k, "—") for k in keys], "e2e": [b.get(k, "—") for k in keys]},
                        index=keys, dtype=object)


def _no_telemetry(cell) -> str:
    """Why a cell shows no NVML samples, in its own terms."""
    if cell.status in ("pending", "running"):
        return f"No NVML telemetry yet: this cell is {cell.status}."
    if cell.status in ("failed", "skipped"):
        return f"No NVML telemetry: this cell {cell.status} before it was timed."
    if not str(cell.device).startswith("cuda"):
        return "No NVML telemetry: this is a CPU cell (NVML samples GPUs only)."
    return ("No NVML telemetry for this GPU cell: NVML was not available when it ran "
            "(install nvidia-ml-py; see the cell's warnings).")


main()
