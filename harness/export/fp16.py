"""fp16 ONNX: a converted graph whose inputs and outputs stay fp32.

Keeping fp32 I/O lets every backend receive the same preprocessed tensor and
return comparable outputs; the cast sits inside the graph.  NVIDIA ModelOpt
AutoCast is used when installed (what TensorRT 11 recommends); otherwise ONNX
Runtime's converter, whose output is re-sorted topologically (it leaves the
graph unsorted, which ``onnx.checker`` rejects).  Ops whose fp16 versions
change semantics or have no kernel (NMS, TopK indices) are kept fp32.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from harness import cache
from harness.measure.provenance import file_hash

KEEP_FP32_OPS = ["NonMaxSuppression", "TopK", "EfficientNMS_TRT", "BatchedNMSDynamic_TRT"]


def to_fp16(fp32_onnx: Path, cache_dir: Path) -> tuple[Path, dict]:
    tool = "modelopt-autocast" if importlib.util.find_spec("modelopt") else "onnxruntime-float16"
    key = hashlib.sha256(json.dumps([file_hash(fp32_onnx), tool, KEEP_FP32_OPS]).encode()).hexdigest()[:20]
    out = cache.cached(Path(cache_dir) / "fp16" / f"{key}.fp16.onnx",
                       lambda staged: (_modelopt if tool == "modelopt-autocast" else _onnxruntime)(
                           fp32_onnx, staged))
    version = _tool_version(tool)
    return out, {"fp16_converter": f"{tool} {version}", "io_dtype": "float32 (keep_io_types)",
                 "kept_fp32_ops": KEEP_FP32_OPS, "fp16_onnx_sha256": file_hash(out)}


def _tool_version(tool: str) -> str:
    import importlib.metadata

    return importlib.metadata.version("nvidia-modelopt" if tool == "modelopt-autocast" else "onnxruntime")


def _onnxruntime(src: Path, dst: Path) -> str:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True, op_block_list=KEEP_FP32_OPS)
    model.topological_sort()
    onnx.checker.check_model(model.model)
    onnx.save(model.model, str(dst))
    return _tool_version("onnxruntime-float16")


def _modelopt(src: Path, dst: Path) -> str:
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    model = convert_to_mixed_precision(onnx_path=str(src), low_precision_type="fp16", keep_io_types=True,
                                       op_types_to_exclude=KEEP_FP32_OPS)
    onnx.save(model, str(dst))
    return _tool_version("modelopt-autocast")
