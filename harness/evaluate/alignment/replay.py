"""Counterfactual postprocessing: a cell's decoded tensors through mmyolo's NMS with other settings.

The replays run :func:`harness.export.host_nms.host_postprocess` (score
threshold, nms_pre top-k, class-aware batched NMS, max_per_img, rescale; rotated
NMS for a rotated cell's (N, A, 5) boxes) and write results the way the worker
does (:func:`to_coco_detections`, or ``rbox`` entries for rotated cells), so a
replay with a cell's own settings reproduces that cell's detections.json.
"""
from __future__ import annotations

from harness.evaluate.alignment.detsets import Dets, from_coco
from harness.evaluate.alignment.settings import NmsSettings


def replay(boxes, scores, metas: list[dict], image_ids, settings: NmsSettings,
           category_ids) -> dict[int, Dets]:
    """Per image id, the detections ``settings`` would have produced from these tensors."""
    from harness.compat import mmcv_ext

    mmcv_ext.install()
    from harness.export.host_nms import host_postprocess

    rotated = boxes.shape[-1] == 5  # a rotated cell (#19): rotated NMS, rbox entries
    if rotated:
        from harness.evaluate.rotated_eval import to_rotated_coco_detections as to_coco
    else:
        from harness.evaluate.coco_eval import to_coco_detections as to_coco
    entries = []
    for start in range(0, len(image_ids), 8):  # bounded memory; results are per image anyway
        chunk = slice(start, start + 8)
        outs = host_postprocess(boxes[chunk], scores[chunk], metas[chunk], settings.test_cfg())
        for image_id, (b, s, l) in zip(image_ids[chunk], outs):
            entries.extend(to_coco(int(image_id), b.numpy(), s.numpy(), l.numpy(), category_ids)[0])
    return from_coco(entries, image_ids, rotated=rotated)


class Replayer:
    """One cell's decoded tensors, replayed with memoised settings (each setting runs once)."""

    def __init__(self, decoded: dict, metas: list[dict], category_ids):
        self.decoded, self.metas, self.category_ids = decoded, metas, tuple(category_ids)
        self.image_ids = [int(i) for i in decoded["image_ids"]]
        self._memo: dict[NmsSettings, dict[int, Dets]] = {}

    def __call__(self, settings: NmsSettings) -> dict[int, Dets]:
        if settings not in self._memo:
            self._memo[settings] = replay(self.decoded["boxes"], self.decoded["scores"], self.metas,
                                          self.image_ids, settings, self.category_ids)
        return self._memo[settings]
