"""The headline block of Overview and Compare: an AP-budget picker and, per batch, every
backend · precision with ms per image, images/s, speed-up and ΔAP against PyTorch fp32."""
import streamlit as st

from harness import report

from dashboard import context, tables

#: AP budget choices of the headline, in AP points (0.01 AP)
BUDGETS = ["0.1", "0.5", "1", "2", "5"]


def headline(ctx, key: str = "headline", *, downloads: bool = True) -> None:
    """The headline table with its AP-budget picker (shared by Overview and Compare; the
    overview leaves the download buttons to Compare and Export, to stay light)."""
    budget = float(context.choice("AP budget (AP points lost at most)", BUDGETS, "budget",
                                  index=BUDGETS.index("1"), container=st.columns([1, 2])[0],
                                  help="the fastest cell whose AP is at most this many AP points "
                                       "(× 0.01 AP) below the PyTorch fp32 reference is starred"))
    columns, rows = tables.headline_rows(ctx, budget)
    if not rows:
        st.info("No cells match the filters.")
        return
    if not any(r["reference"] for r in rows):
        st.info("No PyTorch fp32 cell in this run to compare with: speed-up and ΔAP are blank.")
    st.caption(f"Per batch, fastest first. Speed-up and ΔAP are against the **PyTorch fp32** cell "
               f"of the same model, size, device and batch; ms / image = median model latency ÷ "
               f"batch. ★ = fastest cell losing at most **{budget:g} AP points**. NMS variants are "
               "ranked apart: with `nms: none` the model time excludes the host NMS.")
    tables.show_headline(rows, key, rotated=any(report.is_rotated(c) for c in ctx.selected))
    if downloads:
        tables.download_buttons("headline", columns, rows, title=f"detbench {ctx.run.id}: headline",
                                stem=ctx.run.id, header=report.run_header(ctx.run, ctx.cells))
