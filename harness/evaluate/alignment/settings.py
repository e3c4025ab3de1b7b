"""The NMS settings a cell's detections were produced with, and the replay steps between two.

The reference's are its effective eval settings.  A candidate whose graph ends
in NMS used the settings baked into its export (and TensorRT may clamp
pre_topk; the BatchedNMS graph feeds it at most 4096 boxes), which is what must be
compared, not what the matrix asked for.  EfficientNMS's internal 5,000 cap counts
(box, class) scores above the threshold, not boxes: it is recorded and warned per cell
(``nms_candidate_cap``), not replayed here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

#: the order in which a replay moves settings from the reference's to the candidate's
STEPS = ("pre_topk", "score_thr", "keep_topk", "iou_thr")
#: box caps applied in the graph before a TensorRT NMS plugin (harness.export.deploy)
GRAPH_PRE_TOPK_CAP = {"batched_nms": 4096}
_NO_CAP = 10**9


@dataclass(frozen=True)
class NmsSettings:
    score_thr: float
    iou_thr: float
    pre_topk: int | None  # None: no cap
    keep_topk: int | None  # None: no cap
    multi_label: bool = True
    yolox_style: bool = False  # YOLOX keeps every NMS survivor (no keep_topk cut)
    rotated: bool = False  # rotated boxes: rotated NMS (#19)

    @classmethod
    def from_eval(cls, ev: dict) -> "NmsSettings":
        """From ``provenance["eval"]`` (mmyolo's ``nms_pre <= 0`` means no cap)."""
        pre = ev.get("pre_topk")
        return cls(score_thr=float(ev.get("score_thr") or 0.0), iou_thr=float(ev["iou_thr"]),
                   pre_topk=None if pre is None or pre <= 0 else int(pre),
                   keep_topk=None if ev.get("keep_topk") is None else int(ev["keep_topk"]),
                   multi_label=bool(ev.get("multi_label", True)),
                   yolox_style=bool(ev.get("yolox_style", False)))

    def as_dict(self) -> dict:
        out = asdict(self)
        if not self.rotated:  # records of horizontal cells keep their pre-#19 shape
            out.pop("rotated")
        return out

    def test_cfg(self) -> dict:
        """An mmyolo ``test_cfg`` for :func:`harness.export.host_nms.host_postprocess`."""
        return {"multi_label": self.multi_label, "score_thr": self.score_thr,
                "nms_pre": self.pre_topk or _NO_CAP, "max_per_img": self.keep_topk or _NO_CAP,
                "nms": {"type": "nms_rotated" if self.rotated else "nms", "iou_threshold": self.iou_thr},
                "yolox_style": self.yolox_style}

    def with_step(self, step: str, other: "NmsSettings") -> "NmsSettings":
        return replace(self, **{step: getattr(other, step)})


def effective_settings(nms: str, provenance: dict, rotated: bool = False) -> NmsSettings:
    """The settings that produced a cell's detections: its eval settings, or for a graph
    ending in NMS the ones baked into the graph (clamped and capped as the backend did)."""
    s = replace(NmsSettings.from_eval(provenance["eval"]), rotated=rotated)
    if nms == "none":
        return s
    graph = {k: v for k, v in (provenance.get("export") or {}).items()
             if k in ("pre_topk", "keep_topk", "iou_thr", "score_thr") and v is not None}
    if provenance.get("deploy_pre_topk") is not None:
        graph["pre_topk"] = provenance["deploy_pre_topk"]
    s = replace(s, **graph)
    cap = GRAPH_PRE_TOPK_CAP.get(nms)
    if cap is not None and (s.pre_topk is None or s.pre_topk > cap):
        s = replace(s, pre_topk=cap)
    return s


def replay_steps(ref: NmsSettings, cand: NmsSettings) -> list[tuple[str, NmsSettings]]:
    """``[(step, settings after the step)]``: one setting at a time, in :data:`STEPS` order."""
    out, current = [], ref
    for step in STEPS:
        current = current.with_step(step, cand)
        out.append((step, current))
    return out
