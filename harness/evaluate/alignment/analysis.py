"""One cell's alignment record against its reference, from already-loaded inputs.

The record is what the store keeps (``Store.record_alignment``) and what
``detbench compare --json`` prints; its top level is flat (counts, the
``attribution`` dict, ``iou_hist`` / ``score_delta_hist``, ``worst_images``)
because the dashboard renders exactly those shapes.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from harness.evaluate.alignment import SCHEMA_VERSION
from harness.evaluate.alignment.ap import ap_delta
from harness.evaluate.alignment.attribution import (CAUSES, STEP_CAUSE, Stage, attribute_chain,
                                                    attribute_obvious, output_stage)
from harness.evaluate.alignment.detsets import Dets
from harness.evaluate.alignment.histograms import (ANGLE_DELTA_EDGES, CENTER_SHIFT_EDGES,
                                                   SCORE_DELTA_EDGES, angle_deltas_deg, histogram,
                                                   iou_edges)
from harness.evaluate.alignment.jsonsafe import plain
from harness.evaluate.alignment.lint import batch_lint, cap_lint, keep_topk_lint, settings_lints
from harness.evaluate.alignment.matching import class_flips, greedy_match
from harness.evaluate.alignment.settings import NmsSettings, replay_steps
from harness.evaluate.alignment.tensors import compare_decoded

WORST_IMAGES = 10


@dataclass
class CellData:
    """What the analysis needs of one cell; ``replayer(settings)`` replays its decoded tensors."""

    key: str
    nms: str
    settings: NmsSettings
    detections: dict[int, Dets]
    metrics: dict | None = None
    class_ap: list = field(default_factory=list)
    decoded: dict | None = None
    replayer: Callable[[NmsSettings], dict[int, Dets]] | None = None
    box_type: str = "horizontal"  # "rotated": rotated boxes, matched by rotated IoU (#19)


@dataclass
class ImageResult:
    image_id: int
    replayed: bool
    matched: int
    missing: list[str]
    extra: list[str]
    steps: list[str]
    ious: np.ndarray
    score_deltas: np.ndarray
    flips: int
    angle_deltas: np.ndarray | None = None  # rotated cells: degrees, matched pairs
    center_shifts: np.ndarray | None = None  # rotated cells: pixels, matched pairs


def analyse(ref: CellData, cand: CellData, match_iou: float, batch: dict | None = None) -> dict:
    """The full record: detection diff, attribution, histograms, tensors, AP, lint, batch."""
    chains = chain_sets(ref, cand)
    results = [image_result(i, ref, cand, chains, match_iou) for i in ref.detections]
    record = {"schema": SCHEMA_VERSION, "status": "ok", "reason": None, "cell": cand.key,
              "reference": ref.key, "match_iou": match_iou,
              **({"box_type": "rotated", "iou": "rotated"} if _rotated(ref) else {}),
              **summarise(results, ref, cand, match_iou), **_tensor_fields(ref, cand),
              **ap_delta(ref.metrics, cand.metrics, ref.class_ap, cand.class_ap),
              "settings": {"reference": ref.settings.as_dict(), "candidate": cand.settings.as_dict(),
                           "in_graph_nms": cand.nms != "none"},
              "batch_invariance": batch, "lint": lints(ref, cand, batch),
              "notes": notes(results, ref, cand)}
    return plain(record)


def _rotated(cell: CellData) -> bool:
    return cell.box_type == "rotated" or any(d.rotated for d in cell.detections.values())


def chain_sets(ref: CellData, cand: CellData) -> list[tuple[str, str, dict[int, Dets]]]:
    """The replayed detection sets between the two outputs, in chain order (empty: no tensors)."""
    if ref.replayer is None:
        return []
    sets = [("reference_replay", STEP_CAUSE["reference_replay"], ref.replayer(ref.settings))]
    sets += [(step, STEP_CAUSE[step], ref.replayer(s)) for step, s in replay_steps(ref.settings, cand.settings)]
    if cand.replayer is not None:
        sets.append(("candidate_tensors", STEP_CAUSE["candidate_tensors"], cand.replayer(cand.settings)))
    return sets


def image_result(image_id: int, ref: CellData, cand: CellData, chains, match_iou: float) -> ImageResult:
    r = ref.detections[image_id]
    c = cand.detections.get(image_id, Dets.empty(r.boxes.shape[-1]))
    final = greedy_match(r, c, match_iou)
    inner = [Stage(name, cause, dets[image_id]) for name, cause, dets in chains if image_id in dets]
    replayed = bool(chains) and image_id in chains[0][2]
    if replayed:
        att = attribute_chain([Stage("reference", "other", r), *inner,
                               output_stage(cand.nms != "none", c)], final, match_iou)
    else:
        att = attribute_obvious(r, c, final, ref.settings, cand.settings)
    angles = shifts = None
    if r.rotated:
        rb, cb = r.boxes[final.a_idx], c.boxes[final.b_idx]
        angles = angle_deltas_deg(rb[:, 4], cb[:, 4])
        shifts = np.hypot(cb[:, 0] - rb[:, 0], cb[:, 1] - rb[:, 1])
    return ImageResult(image_id, replayed, len(final.a_idx), att.missing, att.extra,
                       att.missing_steps + att.extra_steps, final.ious,
                       c.scores[final.b_idx] - r.scores[final.a_idx],
                       len(class_flips(r, c, final, match_iou)), angles, shifts)


def _count(causes) -> dict:
    got = Counter(causes)
    return {cause: got.get(cause, 0) for cause in CAUSES}


def summarise(results: list[ImageResult], ref: CellData, cand: CellData, match_iou: float) -> dict:
    matched = sum(r.matched for r in results)
    missing = [c for r in results for c in r.missing]
    extra = [c for r in results for c in r.extra]
    union = matched + len(missing) + len(extra)
    attribution = _count(missing + extra)
    worst = max(attribution, key=lambda k: attribution[k]) if missing or extra else None
    return {
        "images": len(results), "images_replayed": sum(r.replayed for r in results),
        "reference_detections": sum(len(d) for d in ref.detections.values()),
        "candidate_detections": sum(len(d) for d in cand.detections.values()),
        "matched": matched, "missing": len(missing), "extra": len(extra),
        "matched_pct": 100.0 * matched / union if union else 100.0,
        "class_flips": sum(r.flips for r in results),
        "attribution": attribution, "dominant_cause": worst, "unexplained": attribution["other"],
        "attribution_missing": _count(missing), "attribution_extra": _count(extra),
        "attribution_steps": dict(sorted(Counter(s for r in results for s in r.steps).items())),
        "iou_hist": histogram(np.concatenate([r.ious for r in results] or [[]]), iou_edges(match_iou)),
        "score_delta_hist": histogram(np.concatenate([r.score_deltas for r in results] or [[]]),
                                      SCORE_DELTA_EDGES),
        "worst_images": worst_images(results),
        **_rotated_hists(results),
    }


def _rotated_hists(results: list[ImageResult]) -> dict:
    """Rotated cells: how matched pairs' angles and centres moved (#19); nothing for horizontal."""
    if not results or results[0].angle_deltas is None:
        return {}
    return {"angle_delta_hist": histogram(np.concatenate([r.angle_deltas for r in results]),
                                          ANGLE_DELTA_EDGES),
            "center_shift_hist": histogram(np.concatenate([r.center_shifts for r in results]),
                                           CENTER_SHIFT_EDGES)}


def worst_images(results: list[ImageResult], n: int = WORST_IMAGES) -> list[dict]:
    """Images with differences: most unexplained first, then most differences, then id."""
    rows = [{"image_id": r.image_id, "replayed": r.replayed, "matched": r.matched,
             "missing": len(r.missing), "extra": len(r.extra),
             "unexplained": (r.missing + r.extra).count("other"), **_count(r.missing + r.extra)}
            for r in results if r.missing or r.extra]
    rows.sort(key=lambda w: (-w["unexplained"], -(w["missing"] + w["extra"]), w["image_id"]))
    return rows[:n]


def _tensor_fields(ref: CellData, cand: CellData) -> dict:
    if ref.decoded is None or cand.decoded is None:
        whose = "reference" if ref.decoded is None else "candidate"
        return {"tensor": {"available": False, "reason": f"the {whose} kept no decoded tensors"},
                "tensor_boxes_max_abs_err": None, "tensor_scores_max_abs_err": None}
    t = compare_decoded(ref.decoded, cand.decoded)
    return {"tensor": t, "tensor_boxes_max_abs_err": t.get("boxes", {}).get("max_abs"),
            "tensor_scores_max_abs_err": t.get("scores", {}).get("max_abs")}


def lints(ref: CellData, cand: CellData, batch: dict | None) -> list[dict]:
    out = settings_lints(ref.settings, cand.settings, cand.nms)
    if ref.decoded is not None:
        scores = ref.decoded["scores"]
        out += cap_lint(scores, cand.settings, "pre_topk_cap", "its")
        if ref.settings.pre_topk != cand.settings.pre_topk:
            out += cap_lint(scores, ref.settings, "reference_pre_topk_cap", "the reference's")
    out += keep_topk_lint(cand.detections, cand.settings.keep_topk)
    return out + batch_lint(batch)


def notes(results: list[ImageResult], ref: CellData, cand: CellData) -> list[str]:
    """Why some attributions are weaker than others."""
    out = []
    unreplayed = [r for r in results if not r.replayed and (r.missing or r.extra)]
    if unreplayed:
        n = sum(len(r.missing) + len(r.extra) for r in unreplayed)
        out.append(f"{n} differences on {len(unreplayed)} images without decoded tensors were "
                   "attributed only where obvious (score_thr boundary, full keep_topk list); "
                   "the rest count as 'other'")
    differ = any(r.missing or r.extra for r in results)
    if differ and cand.replayer is None and ref.replayer is not None:
        where = "'nms'" if cand.nms != "none" else "'other'"
        out.append(f"the candidate kept no decoded tensors: numeric drift is not separable and "
                   f"counts under {where}")
    mismatch = sum(s == "reference_replay" for r in results for s in r.steps)
    if mismatch:
        out.append(f"{mismatch} differences appear already when the reference's own tensors are "
                   "replayed with its own settings (counted as 'other')")
    return out
