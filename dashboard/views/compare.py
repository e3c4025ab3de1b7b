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


main()
