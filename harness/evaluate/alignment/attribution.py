"""One cause for every detection the candidate lost (missing) or gained (extra).

Replayed images (decoded tensors kept): a chain of detection sets leads from
the reference's detections to the candidate's — the reference's own replay,
then one setting at a time moved to the candidate's (pre_topk → score_thr →
keep_topk → iou_thr) on the reference's tensors, then the candidate's tensors
with its settings, then the candidate's actual output.  A difference is
attributed to the step after which it persists to the end of the chain
(so one that appears, vanishes and reappears is blamed on its last
appearance).  Other images get a cause only when it is obvious.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.evaluate.alignment.detsets import Dets
from harness.evaluate.alignment.matching import Match, greedy_match
from harness.evaluate.alignment.settings import NmsSettings

CAUSES = ("pre_topk", "score_thr", "keep_topk", "nms", "numeric", "other")
#: replay step → cause; the reference's own replay should change nothing (``other`` if it does)
STEP_CAUSE = {"reference_replay": "other", "pre_topk": "pre_topk", "score_thr": "score_thr",
              "keep_topk": "keep_topk", "iou_thr": "nms", "candidate_tensors": "numeric"}
_SCORE_TOL = 1e-6  # detections.json keeps 6 decimals


@dataclass(frozen=True)
class Stage:
    """A detection set in the chain; ``cause`` explains what changed on the way *into* it."""

    name: str
    cause: str
    dets: Dets


@dataclass(frozen=True)
class Attribution:
    """Cause and step per unmatched detection, in ``final.unmatched_a`` / ``unmatched_b`` order."""

    missing: list[str]
    extra: list[str]
    missing_steps: list[str]
    extra_steps: list[str]


def output_stage(in_graph_nms: bool, dets: Dets) -> Stage:
    """The candidate's actual output: what replays can't reproduce is its NMS implementation
    (in-graph NMS: ONNX NonMaxSuppression, TensorRT plugins) or else unexplained."""
    return Stage("candidate_output", "nms" if in_graph_nms else "other", dets)


def attribute_chain(stages: list[Stage], final: Match, match_iou: float) -> Attribution:
    """``stages[0]`` is the reference's output, ``stages[-1]`` the candidate's; ``final`` matches them."""
    stages = _distinct(stages)
    ref, cand, inner = stages[0].dets, stages[-1].dets, stages[1:-1]
    miss, extra = final.unmatched_a, final.unmatched_b
    present_m = [np.ones(len(miss), bool),
                 *(greedy_match(ref, s.dets, match_iou).a_matched[miss] for s in inner),
                 np.zeros(len(miss), bool)]
    present_e = [np.zeros(len(extra), bool),
                 *(greedy_match(s.dets, cand, match_iou).b_matched[extra] for s in inner),
                 np.ones(len(extra), bool)]
    m_stage = _last(np.stack(present_m)) + 1  # the step after its last appearance
    e_stage = _last(~np.stack(present_e)) + 1  # the step after its last absence
    return Attribution([stages[i].cause for i in m_stage], [stages[i].cause for i in e_stage],
                       [stages[i].name for i in m_stage], [stages[i].name for i in e_stage])


def _distinct(stages: list[Stage]) -> list[Stage]:
    """Drop a stage holding the very same set as the one before (an unchanged setting)."""
    out = [stages[0]]
    for s in stages[1:]:
        if s.dets is not out[-1].dets:
            out.append(s)
    return out


def _last(flags: np.ndarray) -> np.ndarray:
    """Per column, the index of the last True row (every column has one)."""
    return flags.shape[0] - 1 - np.argmax(flags[::-1], axis=0)


def attribute_obvious(ref: Dets, cand: Dets, final: Match, s_ref: NmsSettings,
                      s_cand: NmsSettings) -> Attribution:
    """Without tensors: the threshold boundary or a full keep-top-k list, else ``other``."""
    missing = [_obvious(ref.scores[i], s_cand, s_ref, cand) for i in final.unmatched_a]
    extra = [_obvious(cand.scores[i], s_ref, s_cand, ref) for i in final.unmatched_b]
    return Attribution(missing, extra, ["unreplayed"] * len(missing), ["unreplayed"] * len(extra))


def _obvious(score: float, absent_in: NmsSettings, present_in: NmsSettings, other: Dets) -> str:
    """Why a detection present under ``present_in`` settings is absent from ``other``."""
    if absent_in.score_thr > present_in.score_thr and score <= absent_in.score_thr + _SCORE_TOL:
        return "score_thr"
    full = absent_in.keep_topk is not None and len(other) >= absent_in.keep_topk
    if full and score <= other.scores.min() + _SCORE_TOL:
        return "keep_topk"
    return "other"
