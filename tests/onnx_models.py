"""ONNX models in other people's conventions, built from the trained fixture (yolov8_synth).

Each variant wraps detbench's ``DeployModel`` of the fixture in a module that
changes only the interface — input layout/colour/dtype, output convention, box
format, class order — and is exported with torch's exporter.  Where the
declared contract undoes the change exactly, detbench must give the fixture's
PyTorch AP; where it does not, a different one.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "fixtures" / "yolov8_synth"
IMGSZ = 320
CLASSES = ("circle", "square", "triangle")


def fixture_model():
    from harness.models.mmyolo_build import build_model, load_config, prepare_mm

    prepare_mm()
    cfg = load_config(FIXTURE / "config.py", IMGSZ)
    return build_model(cfg, str(FIXTURE / "yolov8_synth.pth"), device="cpu"), cfg


def _xyxy_to(boxes, fmt: str):
    if fmt == "xyxy":
        return boxes
    wh = boxes[..., 2:] - boxes[..., :2]
    if fmt == "xywh":
        return torch.cat([boxes[..., :2], wh], -1)
    return torch.cat([boxes[..., :2] + wh / 2, wh], -1)  # cxcywh


class Wrapped(nn.Module):
    """Interface changes around the fixture's decode (``nms='none'``) or end-to-end graph."""

    def __init__(self, deploy, *, layout="NCHW", color="RGB", uint8=False, output="v8",
                 box_format=None, normalized=False, class_order=None, extra_class=False):
        super().__init__()
        self.deploy, self.layout, self.color, self.uint8 = deploy, layout, color, uint8
        self.output, self.box_format, self.normalized = output, box_format, normalized
        self.class_order, self.extra_class = class_order, extra_class

    def forward(self, x):
        if self.layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        if self.uint8:
            x = x.float() / 255.0  # the fixture's data preprocessor: RGB / 255
        if self.color == "BGR":
            x = x[:, [2, 1, 0]]
        outs = self.deploy(x)
        return getattr(self, f"_{self.output}")(*outs)

    def _classes(self, scores):
        if self.class_order is not None:
            scores = scores[..., list(self.class_order)]
        if self.extra_class:  # a class the dataset does not have ("hexagon"), with real detections
            scores = torch.cat([scores, scores[..., :1] * 0.5], -1)
        return scores

    def _v8(self, boxes, scores):  # Ultralytics v8/v11 raw: [N, 4+C, A], cxcywh pixels
        return torch.cat([_xyxy_to(boxes, self.box_format or "cxcywh"), self._classes(scores)], -1).transpose(1, 2)

    def _v5(self, boxes, scores):  # YOLOv5 style: [N, A, 5+C], score = class * objectness
        obj = scores.amax(-1, keepdim=True)
        cls = scores / obj.clamp_min(1e-12)
        return torch.cat([_xyxy_to(boxes, self.box_format or "cxcywh"), obj, self._classes(cls)], -1)

    def _box(self, boxes):
        b = _xyxy_to(boxes, self.box_format or "xyxy")
        if self.normalized:
            b = b / torch.tensor([IMGSZ, IMGSZ, IMGSZ, IMGSZ], dtype=b.dtype)
        return b

    def _end2end(self, num, boxes, scores, labels):
        return num, self._box(boxes), scores, labels

    def _dets6(self, num, boxes, scores, labels):  # [N, K, 6]: box, score, class
        return torch.cat([self._box(boxes), scores[..., None], labels.float()[..., None]], -1)

    def _dets7(self, num, boxes, scores, labels):  # [N, K, 7]: batch index (-1 = padding), box, score, class
        n, k = scores.shape
        idx = torch.arange(n, dtype=scores.dtype)[:, None].expand(n, k)
        idx = torch.where(scores > 0, idx, torch.full_like(idx, -1.0))
        return torch.cat([idx[..., None], self._box(boxes), scores[..., None], labels.float()[..., None]], -1)


OUTPUT_NAMES = {"v8": ["output0"], "v5": ["output0"], "dets6": ["dets"], "dets7": ["detections"],
                "end2end": ["num_dets", "det_boxes", "det_scores", "det_classes"]}


def export_variant(path: Path, model, cfg, *, batch: int | None = None, **kw) -> Path:
    """Export one variant; ``batch`` None = dynamic batch."""
    from harness.export.deploy import DeployModel
    from harness.export.onnx_export import _nms_settings

    output = kw.get("output", "v8")
    nms = "onnx" if output in ("end2end", "dets6", "dets7") else "none"
    settings = _nms_settings(cfg, 2100, None, None, None)  # 2100 priors at 320 px: no pre-top-k cut
    module = Wrapped(DeployModel(model, nms=nms, **settings).eval(), **kw).eval()
    layout, uint8 = kw.get("layout", "NCHW"), kw.get("uint8", False)
    shape = (batch or 2, 3, IMGSZ, IMGSZ) if layout == "NCHW" else (batch or 2, IMGSZ, IMGSZ, 3)
    dummy = torch.zeros(shape, dtype=torch.uint8 if uint8 else torch.float32)
    names = OUTPUT_NAMES[output]
    dynamic = None if batch else {n: {0: "batch"} for n in ["images", *names]}
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=names, dynamic_axes=dynamic)
    return path
