"""The explicit table of backends.

Each entry says statically what the backend can run (precisions, devices,
NMS variants) and which package it needs, so planning needs no heavy import.
The runner class is imported only when a cell of that backend runs.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    name: str
    module: str
    runner: str
    requires: tuple[str, ...]
    precisions: frozenset[str]
    devices: frozenset[str]
    nms: frozenset[str]

    def available(self) -> tuple[bool, str]:
        """Whether its packages are importable here (no import is done)."""
        if self.name == "tensorrt":
            return _tensorrt_available()
        for mod in self.requires:
            if not _has_module(mod):  # a broken or blocked install counts as absent
                return False, f"python module '{mod}' is not installed"
        return True, "installed"

    def static_skip_reason(self, cell: dict) -> str | None:
        """Why the backend can never run this combination (None when it might)."""
        if cell["precision"] not in self.precisions:
            return (f"{self.name} does not run {cell['precision']} "
                    f"(runs {', '.join(sorted(self.precisions))})")
        if cell["device"].split(":")[0] not in self.devices:
            return f"{self.name} does not run on {cell['device']}"
        if cell["nms"] not in self.nms:
            return f"{self.name} cannot execute nms '{cell['nms']}'"
        return None

    def load_runner_class(self):
        return getattr(importlib.import_module(self.module), self.runner)


def _tensorrt_available() -> tuple[bool, str]:
    """Either full TensorRT or TensorRT-RTX (builds anywhere; runs on Ampere/Ada/Blackwell)."""
    import os

    if os.environ.get("DETBENCH_TENSORRT") == "none":
        return False, "hidden by DETBENCH_TENSORRT=none"
    found = [m for m in ("tensorrt", "tensorrt_rtx_bindings") if _has_module(m)]
    if not found:
        return False, "neither 'tensorrt' nor 'tensorrt_rtx_bindings' is installed"
    if found == ["tensorrt_rtx_bindings"]:
        return True, "TensorRT-RTX only: engines build here; execution needs a GPU RTX supports"
    return True, "installed"


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


BACKENDS: dict[str, Backend] = {
    "pytorch": Backend("pytorch", "harness.backends.pytorch", "PyTorchRunner", ("torch", "mmyolo"),
                       frozenset({"fp32", "fp16", "bf16"}), frozenset({"cpu", "cuda"}),
                       frozenset({"none"})),
    "onnxruntime": Backend("onnxruntime", "harness.backends.onnxruntime", "OnnxRuntimeRunner",
                           ("onnxruntime", "onnx", "torch", "mmyolo"),
                           frozenset({"fp32", "fp16", "int8", "int8-mixed"}), frozenset({"cpu", "cuda"}),
                           frozenset({"none", "onnx"})),
    "tensorrt": Backend("tensorrt", "harness.backends.tensorrt", "TensorRTRunner",
                        ("onnx", "torch", "mmyolo"),
                        frozenset({"fp32", "fp16", "int8", "int8-mixed"}), frozenset({"cuda"}),
                        frozenset({"none", "onnx", "efficient_nms", "batched_nms"})),
}
