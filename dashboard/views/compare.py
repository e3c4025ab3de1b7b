"""Compare: the headline, latency vs AP with the Pareto frontier, throughput vs batch, the
classic table."""
import streamlit as st

from harness import report

from dashboard import charts, context, tables
from dashboard.analysis import PICK, pareto_front
from dashboard.headline import headline

X_CHOICES = ["ms per image", "median ms", "p99 ms", "e2e median ms"]
Y_CHOICES = ["AP", "AP50", "AP75"]
SCALES = ["linear", "log"]


def main() -> None:
    ctx = context.current()
    context.header("Compare", ctx)
    ok = ctx.frame[ctx.frame["status"] == "ok"]

    st.subheader("Fastest here, and what it costs in AP")
    headline(ctx)

    st.subheader("Latency vs accuracy")
    left, middle, right = st.columns([2, 2, 1])
    x = PICK[context.choice("Latency (model time)", X_CHOICES, "x", container=left)]
    y = PICK[context.choice("Accuracy", Y_CHOICES, "y", container=middle)]
    log_x = context.choice("x axis", SCALES, "xscale", container=right) == "log"
    front = pareto_front(ok, x, y)
    st.plotly_chart(charts.pareto_scatter(ok, front, x, y, log_x=log_x), key="pareto")
    st.caption("Colour: backend · precision (the same in every chart); shape: batch size (open: "
               "NMS inside the graph); red outline: unstable latency. The dashed line is the "
               "Pareto frontier: cells for which no other cell is both at least as fast and at "
               "least as accurate. Latency per image (median ÷ batch) compares batch sizes "
               "fairly. Hover a point for ΔAP and speed-up.")
    if not front.empty:
        with st.expander(f"frontier cells ({len(front)})"):
            tables.show(tables.FRONTIER_COLUMNS[:6] + [y, x],
                        tables.frame_rows(front, tables.FRONTIER_COLUMNS[:6] + [y, x]))

    _calibration_study(ctx)

    st.subheader("Throughput vs batch size")
    st.plotly_chart(charts.throughput_lines(ok), key="throughput")

    st.subheader("Classic table")
    columns, rows = tables.classic_table(ctx)
    batches, precisions = report.classic_axes(ctx.selected or ctx.cells)
    st.caption(f"AP and median model latency (ms per batch) of each ok cell, batch "
               f"{', '.join(map(str, batches)) or '—'} × {' / '.join(precisions) or '—'} (the run's "
               "own); — where the cell is missing, failed or skipped.")
    if rows:
        tables.show(columns, rows)
        tables.download_buttons("classic", columns, rows, title=f"detbench {ctx.run.id}: classic table",
                                stem=ctx.run.id, header=report.run_header(ctx.run, ctx.cells))
    else:
        st.info("No cells among those shown.")


def _calibration_study(ctx) -> None:
    """int8 AP vs calibration method and calibration set size, when the run sweeps them (#18)."""
    from dashboard import calibration

    frame = calibration.study_frame(ctx.selected)
    if frame.empty:
        return
    st.subheader("int8 calibration: AP vs method and calibration set size")
    references = {f"{c.backend} {c.precision} (reference)": c.metrics["AP"] for c in ctx.cells
                  if (c.backend, c.precision) == report.REFERENCE and c.status == "ok"
                  and (c.metrics or {}).get("AP") is not None
                  and (c.model, c.imgsz) in set(zip(frame["model"], frame["imgsz"]))}
    st.plotly_chart(calibration.study_figure(frame, dict(list(references.items())[:1])),
                    key="calibration-study")
    for line in calibration.same_scales(frame):
        st.warning(line)
    failed = frame[frame["status"] != "ok"]
    st.caption(f"{len(frame) - len(failed)} int8 cells of this run, one per calibration method × "
               "calibration set size (a matrix with lists in `calibration.method` / "
               "`calibration.images`); every point is evaluated on the run's evaluation split. "
               "Dashed: the same backend's fp32 AP (the int8 graph's float baseline); dotted: the "
               "PyTorch fp32 reference." + (f" Not ok: {', '.join(failed['key'])}." if len(failed) else ""))
    left, right = st.columns(2)
    left.markdown("**AP**")
    left.dataframe(calibration.pivot(frame, "AP").round(4), hide_index=True)
    right.markdown("**ΔAP vs fp32 (same backend)**")
    right.dataframe(calibration.pivot(frame, "dAP_fp32").round(4), hide_index=True)


main()
