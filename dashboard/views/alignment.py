"""Alignment: why a deployed cell's detections differ from the PyTorch fp32 reference."""
import pandas as pd
import streamlit as st

from dashboard import charts, context
from dashboard.analysis import alignment_of, histogram_of

NO_DATA = ("No alignment data for this run (needs a non-reference cell plus a PyTorch fp32 "
           "reference).")
COUNT_KEYS = ("attribution", "attribution_counts", "causes", "counts")
WORST_KEYS = ("worst_images", "worst")


def main() -> None:
    ctx = context.current()
    context.header("Alignment", ctx)
    found = [(c, a) for c in ctx.selected if (a := alignment_of(ctx.store, c))]
    if not found:
        st.info(NO_DATA)
        return
    by_key = {c.key: (c, a) for c, a in found}
    key = context.choice("Cell", list(by_key), "cell",
                         help="cells of this run that carry alignment data")
    cell, data = by_key[key]
    if not isinstance(data, dict):
        st.json(data)
        return
    render(data)
    with st.expander("raw alignment data"):
        st.json(data, expanded=False)


def render(data: dict) -> None:
    counts = next((data[k] for k in COUNT_KEYS if k in data), None)
    if isinstance(counts, list):
        counts = {str(r.get("cause", r.get("name", i))): r.get("count", 0)
                  for i, r in enumerate(counts) if isinstance(r, dict)}
    if isinstance(counts, dict) and counts:
        st.plotly_chart(charts.bars(list(counts), list(counts.values()),
                                    "differences attributed per cause", "cause"), key="causes")
    for name, spec in data.items():
        if "hist" not in name and not any(w in name for w in ("iou", "score")):
            continue
        title = name.replace("_", " ")
        shape = histogram_of(spec)
        if shape:
            st.plotly_chart(charts.bars(*shape, title, title), key=f"hist-{name}")
        elif isinstance(spec, list) and spec and all(isinstance(v, (int, float)) for v in spec):
            st.plotly_chart(charts.value_histogram(spec, title, title), key=f"hist-{name}")
    worst = next((data[k] for k in WORST_KEYS if k in data), None)
    if isinstance(worst, list) and worst:
        st.subheader("Worst images")
        st.dataframe(pd.DataFrame(worst), hide_index=True)
    scalars = {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool))}
    if scalars:
        st.dataframe(pd.DataFrame({"field": list(scalars), "value": list(map(str, scalars.values()))}),
                     hide_index=True)


main()
