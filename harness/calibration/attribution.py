"""Which layer groups an int8 cell's differences come from, on the cell's own evaluation images.

The sensitivity table (``sensitivity.py``) ranks layer groups on a split of their own; this
module asks the same question of the cell's evaluation comparison: on the evaluation images,
the fp32 graph and the cell's Q/DQ graph are run again with each of a few layer groups left
float, and for each the share of the int8 ΔAP, and of the detections that differ from the
fp32 graph's, that disappears is recorded — "72 % of the ΔAP disappears when the head stays
float".  Groups: the three parts (backbone, neck, head), the sensitivity ranking's top groups,
and for a mixed cell its kept-float set.  Every run is ONNX Runtime on the CPU (the same Q/DQ
graph and post-processing as an ONNX Runtime cell; a TensorRT cell's engine is not re-run), so
the shares are comparable across backends; each evaluation is cached like the sensitivity ones.
"""
from __future__ import annotations

from pathlib import Path

PARTS = ("backbone", "neck", "head")
TOP_GROUPS = 3  # of the sensitivity ranking


def candidates(groups: dict[str, list[str]], table: dict | None, mix: dict | None) -> list[dict]:
    """The float sets to try: ``{"kind", "name", "groups"}``, parts first, no set twice."""
    out: list[dict] = []
    for part in PARTS:
        members = [g for g, nodes in groups.items() if nodes and g.split(".")[0] == part]
        if members:
            out.append({"kind": "part", "name": part, "groups": members})
    ranked = [r["group"] for r in (table or {}).get("rows", []) if r.get("convs") and r.get("rank")]
    for group in ranked[:TOP_GROUPS]:
        out.append({"kind": "group", "name": group, "groups": [group]})
    if mix and mix.get("kept_float_nodes"):
        from harness.calibration.sensitivity import float_text

        out.append({"kind": "mix", "name": f"the mix's float set ({float_text(mix)})",
                    "groups": list(mix.get("kept_float_groups") or []), "nodes": sorted(mix["kept_float_nodes"])})
    seen, unique = set(), []
    for c in out:
        key = frozenset(c["nodes"]) if "nodes" in c else frozenset(n for g in c["groups"] for n in groups[g])
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def attribute(ev, groups: dict[str, list[str]], flops: dict[str, float], table: dict | None = None,
              mix: dict | None = None) -> dict:
    """The record: fp32 and int8 AP and differences on ``ev``'s split, and one row per float set.

    ``ev``: an :class:`~harness.calibration.sensitivity.Evaluator` on the evaluation images
    with ``match_iou`` set.
    """
    total = sum(flops.values()) or 1.0
    fp32 = ev.evaluate(None)
    full = ev.evaluate(frozenset())
    loss = fp32["ap"] - full["ap"]
    rows = []
    for c in candidates(groups, table, mix):
        nodes = frozenset(c["nodes"]) if "nodes" in c else frozenset(n for g in c["groups"] for n in groups[g])
        got = ev.evaluate(nodes)
        boot = ev.delta(nodes) if hasattr(ev, "delta") else None
        rows.append({**c, "convs": len(nodes),
                     **({"delta_ap_se": boot["se"], "delta_ap_ci": [boot["ci_low"], boot["ci_high"]]}
                        if boot else {}),
                     "flops_fraction": sum(flops.get(n, 0.0) for n in nodes) / total,
                     "ap": got["ap"], "delta_ap": got["ap"] - fp32["ap"],
                     "recovered_fraction": (got["ap"] - full["ap"]) / loss if loss > 0 else None,
                     "differences": got["differences"],
                     "differences_recovered_fraction": ((full["differences"] - got["differences"])
                                                        / full["differences"]
                                                        if full["differences"] else None)})
    boot = ev.delta(frozenset()) if hasattr(ev, "delta") else None
    return {"split": ev.split.source, "images": ev.split.images, "match_iou": ev.match_iou,
            **({"int8_delta_ap_se": boot["se"], "int8_delta_ap_ci": [boot["ci_low"], boot["ci_high"]],
                "bootstrap": {k: boot[k] for k in ("samples", "seed", "level")}} if boot else {}),
            "method": ev.method, "runtime": "ONNX Runtime CPU EP (the cell's Q/DQ graph and host post-processing)",
            "fp32_ap": fp32["ap"], "int8_ap": full["ap"], "int8_delta_ap": -loss,
            "fp32_detections": fp32.get("detections"), "int8_differences": full["differences"],
            "int8_missing": full["missing"], "int8_extra": full["extra"], "rows": rows}


def lines(record: dict, limit: int = 4) -> list[str]:
    """Plain sentences, the largest share first: parts, then groups, then the mix."""
    where = f"evaluation split, {record['images']} images"
    loss = -record["int8_delta_ap"]
    diffs = record["int8_differences"]
    if loss <= 0:
        head = [f"int8 costs no AP on the {where} (ΔAP {record['int8_delta_ap']:+.4f} vs the fp32 "
                f"graph); {diffs:,} detections differ from the fp32 graph's"]
    else:
        head = []
    out = []
    for row in sorted(record["rows"], key=lambda r: -(r["recovered_fraction"] or 0.0)):
        what = {"part": f"the {row['name']}", "group": row["name"],
                "mix": row["name"] if "nodes" in row else f"the mix's float groups ({', '.join(row['groups'])})"}[row["kind"]]
        diff = row["differences_recovered_fraction"]
        diff_text = "" if diff is None else f"; {diff:.0%} of the {diffs:,} differing detections too"
        if loss > 0:
            over = " — AP above the fp32 graph's" if row["recovered_fraction"] > 1 else ""
            out.append(f"{row['recovered_fraction']:.0%} of the int8 ΔAP ({-loss:+.4f}) disappears when "
                       f"{what} stays float ({row['flops_fraction']:.1%} of conv FLOPs; {where}{diff_text}{over})")
        elif diff is not None:
            out.append(f"{diff:.0%} of the {diffs:,} differing detections disappear when {what} "
                       f"stays float ({where})")
    return head + out[:limit]


def evaluation_attribution(ctx, fp32_onnx: Path, calib, test_cfg, groups, flops, table=None,
                           mix=None) -> dict | None:
    """The record for a cell (None when ``calibration.attribution_images`` is 0): the first
    ``attribution_images`` evaluation images, preprocessed as the cell does."""
    from harness.calibration.sensitivity import Evaluator, build_split
    from harness.data.coco import CocoDataset

    c = ctx.cell["calibration"]
    n = int(c.get("attribution_images", 100))
    if n <= 0:
        return None
    ds = ctx.dataset
    found = CocoDataset(ds.ann_file, tuple(ds.images[:n]), ds.category_ids, ds.category_names)
    what = f"evaluation split ({len(found.images)} of {len(ds.images)} images)" \
        if len(found.images) < len(ds.images) else "evaluation split"
    split = build_split(found, ctx.preprocessor("cpu"), what)
    match_iou = float((ctx.cell.get("alignment") or {}).get("match_iou", 0.5))
    ev = Evaluator(fp32_onnx, calib, c["method"], c["percentile"], ctx.cache_dir, split, test_cfg,
                   match_iou=match_iou, smoothing=c.get("smoothing"))
    from harness.calibration.sensitivity import bootstrap_settings

    ev.bootstrap = bootstrap_settings(c)
    record = attribute(ev, groups, flops, table, mix)
    record["evaluations_run"] = ev.evaluations
    return record


def rows(record: dict) -> list[dict]:
    """Display rows (strings) of the record: ``detbench compare``, ``show`` and the dashboard."""
    def pct(v):
        return "—" if v is None else f"{v:.0%}"

    def ci(v):
        return "—" if not v else f"[{v[0]:+.4f}, {v[1]:+.4f}]"

    out = [{"left float": "nothing (the int8 graph)", "kind": "", "convs": "0", "conv FLOPs": "0.0%",
            "AP": f"{record['int8_ap']:.4f}", "ΔAP vs fp32": f"{record['int8_delta_ap']:+.4f}",
            "ΔAP 95% CI": ci(record.get("int8_delta_ap_ci")), "ΔAP removed": "—", "differing detections": f"{record['int8_differences']:,}",
            "differences removed": "—"}]
    for r in record["rows"]:
        out.append({"left float": r["name"] if r["kind"] != "mix" else ", ".join(r["groups"]),
                    "kind": r["kind"], "convs": str(r["convs"]), "conv FLOPs": f"{r['flops_fraction']:.1%}",
                    "AP": f"{r['ap']:.4f}", "ΔAP vs fp32": f"{r['delta_ap']:+.4f}",
                    "ΔAP 95% CI": ci(r.get("delta_ap_ci")), "ΔAP removed": pct(r["recovered_fraction"]),
                    "differing detections": f"{r['differences']:,}",
                    "differences removed": pct(r["differences_recovered_fraction"])})
    return out


def caption(record: dict) -> str:
    from harness.evaluate.ap_bootstrap import interval

    boot = record.get("bootstrap")
    how = (f"; ΔAP intervals: paired bootstrap over images ({boot['samples']} resamples, seed {boot['seed']})"
           if boot else "")
    return (f"{record['split']} ({record['images']} images), {record['runtime']}; fp32 graph AP "
            f"{record['fp32_ap']:.4f}, int8 AP {record['int8_ap']:.4f} (ΔAP {record['int8_delta_ap']:+.4f}"
            f"{interval(record.get('int8_delta_ap_se'), record.get('int8_delta_ap_ci'))}){how}; "
            f"differing detections: unmatched against the fp32 graph's at IoU {record['match_iou']:g}")


def summary_lines(provenance: dict) -> list[str]:
    """What ``detbench show`` prints under an int8 cell: its mix, then the attribution."""
    out = []
    mix = provenance.get("int8_mixed")
    if mix:
        from harness.calibration.sensitivity import float_text

        float_part = (f"float: {float_text(mix)}; "
                      f"{mix['int8_conv_flops_fraction']:.1%} of conv FLOPs int8")
        if mix["met"] is None:
            out.append(f"mix given by calibration.float_groups (no search); {float_part}")
        else:
            state = "met" if mix["met"] else "NOT met (best mix kept)"
            out.append(f"mix: ΔAP budget {mix['ap_budget']} {state} on the sensitivity split; {float_part}")
    record = provenance.get("int8_attribution")
    if record:
        out += lines(record)
    return out
