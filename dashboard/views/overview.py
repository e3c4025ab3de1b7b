"""Overview: every run, and for the chosen run its matrix as a heatmap and its failures."""
import streamlit as st

from dashboard import charts, context, tables

HEATMAP_VALUES = {"status": "status", "AP": "AP", "median ms": "median_ms",
                  "images/s": "throughput_ips"}


def main() -> None:
    ctx = context.current()
    context.header("Overview", ctx)

    counts = ctx.run.counts
    cols = st.columns(5)
    for col, (label, value) in zip(cols, [("cells", len(ctx.cells)), ("ok", counts.get("ok", 0)),
                                          ("failed", counts.get("failed", 0)),
                                          ("skipped", counts.get("skipped", 0)),
                                          ("pending", counts.get("pending", 0) + counts.get("running", 0))]):
        col.metric(label, value)

    st.subheader("Matrix")
    value = context.choice("Colour cells by", list(HEATMAP_VALUES), "heat")
    st.plotly_chart(charts.matrix_heatmap(ctx.frame, HEATMAP_VALUES[value]), key="heatmap")
    st.caption("rows: model · backend · precision; columns: batch · input size. "
               "Latency is the median model time per batch.")

    st.subheader("Failures")
    failed = [c for c in ctx.selected if c.status == "failed"]
    skipped = [c for c in ctx.selected if c.status == "skipped"]
    if not failed and not skipped:
        st.success("No failed or skipped cells among those shown.")
    else:
        tables.show(*tables.failures_table(ctx))
    for c in failed:
        with st.expander(f"{c.key} — failed at {c.stage or '?'}: {(c.error or '').splitlines()[0][:120] if c.error else ''}"):
            st.markdown(f"**stage** `{c.stage or '—'}`")
            st.code(c.error or "(no error message)", language=None)
            st.markdown("**log tail**")
            st.code(c.log_tail or "(no log captured)", language=None)

    st.subheader("Runs")
    tables.show(*tables.runs_table(ctx))


main()
