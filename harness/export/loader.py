"""The export step of a cell, shared by the ONNX Runtime and TensorRT runners.

Lazy and cached: the graph for (config, weights, NMS variant and settings,
image size, opset) is exported once and reused by every cell and run that
asks for the same thing; its hash goes into the cell's provenance.
"""
from __future__ import annotations

import json
from pathlib import Path

OPSET = 17


def export_for_cell(ctx, model_cpu, *, pre_topk: int | None = None) -> tuple[Path, dict]:
    """The cell's ONNX graph (fp32) and its export metadata.

    NMS settings are the cell's effective eval settings, so an in-graph NMS
    uses the same thresholds as the reference unless a backend must cap them
    (``pre_topk``: e.g. TensorRT's TopK limit).
    """
    from harness.export.onnx_export import export_cached, export_key, export_onnx

    cell, ev = ctx.cell, ctx.effective_eval()
    nms = cell["nms"]
    settings = {"pre_topk": pre_topk if pre_topk is not None else _positive(ev["pre_topk"]),
                "keep_topk": ev["keep_topk"], "iou_thr": ev["iou_thr"], "score_thr": ev["score_thr"]}
    spec = ctx.model_spec
    key = export_key(ctx.config_path, spec["checkpoint"], nms=nms, imgsz=cell["imgsz"], opset=OPSET,
                     **settings)

    def build(path: Path) -> dict:
        return export_onnx(model_cpu, ctx.cfg, path, imgsz=cell["imgsz"], nms=nms, opset=OPSET,
                           **settings)

    path = export_cached(Path(ctx.cache_dir) / "onnx", key, build)
    meta_file = path.with_suffix(".json")
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    meta.pop("key", None)
    return path, {"onnx": str(path), "onnx_sha256": meta.get("sha256"), "export": meta}


def _positive(value):
    """mmyolo's ``nms_pre = -1`` (YOLOX) means no cap; a graph needs a number, so: none given."""
    return None if value is None or value <= 0 else value
