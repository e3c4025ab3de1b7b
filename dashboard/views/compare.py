"""Compare: latency vs AP with the Pareto frontier, throughput vs batch, the classic table."""
import streamlit as st

from dashboard import charts, context, tables
from dashboard.analysis import PICK, pareto_front

X_CHOICES = ["ms per image", "median ms", "p99 ms", "e2e median ms"]
Y_CHOICES = ["AP", "AP50", "AP75"]


def main() -> None:
    ctx = context.current()
    context.header("Compare", ctx)
    ok = ctx.frame[ctx.frame["status"] == "ok"]

    st.subheader("Latency vs accuracy")
    left, right = st.columns(2)
    x = PICK[context.choice("Latency (model time)", X_CHOICES, "x", container=left)]
    y = PICK[context.choice("Accuracy", Y_CHOICES, "y", container=right)]
    front = pareto_front(ok, x, y)
    st.plotly_chart(charts.pareto_scatter(ok, front, x, y), key="pareto")
    st.caption("Colour: backend · precision; symbol: model. The dashed line is the Pareto frontier: "
               "cells for which no other cell is both at least as fast and at least as accurate. "
               "Latency per image (median ÷ batch) compares batch sizes fairly; per-batch latencies "
               "compare best within one batch size (sidebar filter).")
    if not front.empty:
        with st.expander(f"frontier cells ({len(front)})"):
            tables.show(tables.FRONTIER_COLUMNS[:6] + [y, x],
                        tables.frame_rows(front, tables.FRONTIER_COLUMNS[:6] + [y, x]))

    st.subheader("Throughput vs batch size")
    st.plotly_chart(charts.throughput_lines(ok), key="throughput")

    st.subheader("Classic table")
    st.caption("AP and median model latency (ms per batch) of each ok cell, batch 1 and 4 × "
               "fp32 / fp16 / int8; — where the cell is missing, failed or skipped.")
    columns, rows = tables.classic_table(ctx)
    if rows:
        tables.show(columns, rows)
        tables.download_buttons("classic", columns, rows, title=f"detbench {ctx.run.id}: classic table",
                                stem=ctx.run.id)
    else:
        st.info("No cells with batch 1 or 4 and precision fp32, fp16 or int8 among those shown.")


main()
