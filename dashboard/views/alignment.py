"""Alignment: why a deployed cell's detections differ from the PyTorch fp32 reference."""
import pandas as pd
import streamlit as st

from dashboard import charts, context
from dashboard.analysis import alignment_of, alignment_summary, histogram_of

NO_DATA = ("No alignment data for this run (needs a non-reference cell plus a PyTorch fp32 "
           "reference).")
COUNT_KEYS = ("attribution", "attribution_counts", "causes", "counts")
WORST_KEYS = ("worst_images", "worst")
#: rotated cells (#19) are matched by rotated IoU and also show how angles and centres moved
HIST_TITLES = {"angle_delta_hist": "angle difference of matched pairs (degrees, rotated boxes)",
               "center_shift_hist": "centre shift of matched pairs (pixels, rotated boxes)"}


def main() -> None:
    ctx = context.current()
    context.header("Alignment", ctx)
    found = [(c, a) for c in ctx.selected if (a := alignment_of(ctx.store, c))]
    if not found:
        st.info(NO_DATA)
        return
    found.sort(key=lambda ca: -_differences(ca[1]))  # the most interesting cell first
    by_key = {c.key: (c, a) for c, a in found}
    key = context.choice("Cell", list(by_key), "cell",
                         help="cells of this run that carry alignment data")
    cell, data = by_key[key]
    if not isinstance(data, dict):
        st.json(data)
        return
    summary = alignment_summary(data)
    st.markdown(summary["headline"])
    if data.get("box_type") == "rotated":
        st.caption("Rotated cell: detections matched by **rotated IoU** (exact polygon overlap); "
                   "ΔAP is rotated-IoU AP.")
    for line in summary["warnings"]:
        st.warning(line)
    for note in summary["notes"]:
        st.info(f"**Note from the analysis:** {note}")
    classes = data.get("class_ap_delta")
    if isinstance(classes, list) and classes:
        st.plotly_chart(charts.class_delta_bars(classes), key="class-delta")
    _draw_worst(ctx, cell, data)  # pictures first: they say more than the histograms
    render(data)
    _int8_layers(data)
    with st.expander("raw alignment data"):
        st.json(data, expanded=False)


def _differences(data) -> int:
    return int(data.get("missing", 0) or 0) + int(data.get("extra", 0) or 0) if isinstance(data, dict) else 0


DRAW_MODES = ["only differing", "all at eval threshold"]


def _draw_worst(ctx, cell, data: dict, count: int = 3) -> None:
    """The worst images with boxes: reference (green, thick) vs this cell (red, thin), either
    only the detections that differ (unmatched at the analysis' IoU) or every detection above
    the evaluation score threshold."""
    from dashboard.drawing import draw

    worst = [w for w in data.get("worst_images") or [] if isinstance(w, dict)][:count]
    reference = next((c for c in ctx.cells if c.key == data.get("reference")), None)
    if not worst or reference is None:
        return
    st.subheader("Worst images, boxes drawn")
    mode = context.choice("Boxes", DRAW_MODES, "boxes")
    thr = ((data.get("settings") or {}).get("candidate") or {}).get("score_thr")
    match_iou = float(data.get("match_iou") or 0.5)
    if mode == DRAW_MODES[0]:
        st.caption(f"green (thick): reference detections this cell misses · red (thin): this "
                   f"cell's extra detections (class-aware matching at IoU ≥ {match_iou:g}) — the "
                   "same differences the counts above attribute.")
    else:
        st.caption(f"green (thick): PyTorch fp32 reference · red (thin): this cell · every "
                   f"detection with score ≥ {thr if thr is not None else 0:g} (the evaluation "
                   "threshold)")
    columns = st.columns(len(worst))
    for col, row in zip(columns, worst):
        picture = draw(int(row["image_id"]), reference, cell, min_score=float(thr or 0.0),
                       only_differing=mode == DRAW_MODES[0], match_iou=match_iou)
        causes = ", ".join(f"{k} {row[k]}" for k in ("pre_topk", "score_thr", "keep_topk", "nms",
                                                     "numeric", "other") if row.get(k))
        label = (f"image {row['image_id']}: missing {row.get('missing', 0)}, extra "
                 f"{row.get('extra', 0)}" + ("" if row.get("replayed", True) else " (not replayed)"))
        if picture is None:
            col.info(f"{label} (image or detections file not found on this machine)")
        else:
            col.image(picture, caption=f"{label} — {causes or 'no differences'}")


def _int8_layers(data: dict) -> None:
    """int8 cells: the ranked layer-group sensitivity table, the mix and the attribution (#18)."""
    from harness.runner.compare import mix_summary, sensitivity_rows

    layers = data.get("int8_layers")
    if not isinstance(layers, dict) or not layers.get("sensitivity"):
        return
    st.subheader("int8 sensitivity per layer group")
    st.caption(mix_summary(layers))
    st.dataframe(pd.DataFrame(sensitivity_rows(layers)), hide_index=True)
    for line in layers.get("attribution") or []:
        st.markdown(f"- {line}")


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
        title = HIST_TITLES.get(name) or name.replace("_", " ")
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
        with st.expander("every stored number of this record"):
            st.dataframe(pd.DataFrame({"field": list(scalars),
                                       "value": list(map(str, scalars.values()))}), hide_index=True)


main()
