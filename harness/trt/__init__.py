"""Backend-neutral TensorRT build layer: detect, check, build, calibrate, cache.

Works with NVIDIA TensorRT 10/11 (``tensorrt``) and TensorRT for RTX
(``tensorrt_rtx_bindings``, which builds on machines without a GPU).  Importing
this package imports no TensorRT, onnx or torch: names resolve lazily.

    flavour = detect()                                   # or None: why_unavailable()
    problems = check_graph("m.onnx", flavour, "fp16")    # before building
    key = engine_cache_key(file_sha256("m.onnx"), "fp16", (1, 8, 16), flavour.name,
                           flavour.version, gpu_name, cc)
    path = cached_engine(cache_dir, key, functools.partial(
        build_engine, "m.onnx", flavour=flavour, precision="fp16", profile=(1, 8, 16)))
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "TrtFlavour": "flavour", "detect": "flavour", "why_unavailable": "flavour",
    "DOCUMENTED_TOPK_MAX": "flavour",
    "Problem": "capability", "check_graph": "capability", "clamp_pre_topk": "capability",
    "graph_features": "capability", "nms_candidate_cap": "capability",
    "nms_variant_problem": "capability",
    "BuildError": "build", "BuildResult": "build", "build_engine": "build",
    "make_calibrator": "calibrator",
    "engine_cache_key": "cache", "cached_engine": "cache", "engine_meta": "cache",
    "file_sha256": "cache", "calibration_cache_name": "cache", "timing_cache_name": "cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness.trt' has no attribute '{name}'")
    return getattr(importlib.import_module(f"harness.trt.{module}"), name)
