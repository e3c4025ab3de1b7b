"""Overview: the headline (which backend · precision is fastest per batch, at what AP cost),
the matrix as a heatmap, failures, and every run with its hardware and caveats."""
import streamlit as st

from dashboard import charts, context, tables
from dashboard.headline import headline

#: picker label -> heatmap value; the first is the default
HEATMAP_VALUES = {"speed-up": "speedup", "ΔAP": "dAP", "ms per image": "ms_per_image",
                  "AP": "AP", "images/s": "throughput_ips", "status": "status"}
def counters(ctx) -> None:
    """Cell counts of what the filters show (the run's totals in the help text)."""
    shown = [c.status for c in ctx.selected]
    total = ctx.run.counts or {}
    items = [("cells", len(shown), len(ctx.cells)), ("ok", shown.count("ok"), total.get("ok", 0)),
             ("failed", shown.count("failed"), total.get("failed", 0)),
             ("skipped", shown.count("skipped"), total.get("skipped", 0)),
             ("pending", shown.count("pending") + shown.count("running"),
              total.get("pending", 0) + total.get("running", 0))]
    for col, (label, value, whole) in zip(st.columns(len(items)), items):
        col.metric(label, value, help=f"{whole} in the whole run")


def main() -> None:
    ctx = context.current()
    context.header("Overview", ctx)
    counters(ctx)

    st.subheader("Fastest here, and what it costs in AP")
    headline(ctx, downloads=False)

    st.subheader("Matrix")
    value = context.choice("Colour cells by", list(HEATMAP_VALUES), "heat")
    st.plotly_chart(charts.matrix_heatmap(ctx.frame, HEATMAP_VALUES[value]), key="heatmap")
    st.caption("rows: model · backend · precision; columns: batch · input size. Each ok cell: "
               "median model latency per image, speed-up and ΔAP against the PyTorch fp32 cell "
               "of the same batch.")

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
