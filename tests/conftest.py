"""Shared fixtures: a small synthetic dataset and helpers to run the CLI in-process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Run ``detbench`` as a user would: a separate process, real exit code."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


#: ``detbench`` as a terminal starts it, whatever this test process's own signal state is: SIGINT
#: and SIGTERM unblocked, Python's Ctrl-C handler installed.  A child inherits ignored and blocked
#: signals through fork/exec (a Python child keeps SIGINT ignored), so a test that interrupts a
#: real run must not depend on what earlier tests or libraries left in the pytest process.
DETBENCH_AS_FROM_A_TERMINAL = [
    sys.executable, "-c",
    "import runpy, signal, sys\n"
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
    "sys.argv[0] = 'detbench'\n"
    "runpy.run_module('harness.cli', run_name='__main__', alter_sys=True)\n"]


def signal_state() -> str:
    """This process's SIGINT disposition and blocked signals (for a failing interruption test)."""
    import signal

    return (f"pytest process: SIGINT handler {signal.getsignal(signal.SIGINT)!r}, blocked "
            f"{sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))}")


@pytest.fixture(scope="session")
def synth_val(tmp_path_factory):
    """A small deterministic COCO dataset (images dir, annotations file)."""
    from harness.data.synth import generate

    out = tmp_path_factory.mktemp("synth_val")
    ann = generate(out, images=6, seed=2, size=320)
    return out / "images", ann


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def yolo_n_export(tmp: Path, calibration: dict):
    """yolov8_n (random weights, 64 px) exported for an int8-mixed ONNX Runtime cell with these
    calibration settings: ``(fp32 ONNX path, layer groups, calibration set)``."""
    import onnx

    from harness import matrix as mx
    from harness.calibration.sensitivity import layer_groups
    from harness.data.datasets import resolve_dataset
    from harness.export.loader import export_for_cell
    from harness.runner.context import CellContext

    m = mx.parse({"models": [{"name": "yolov8_n", "checkpoint": "random"}], "backends": ["onnxruntime"],
                  "precisions": ["int8-mixed"], "image_sizes": [64],
                  "dataset": {"synth": {"images": 2, "seed": 2, "size": 96}}, "calibration": calibration})
    cell = {**mx.expand(m)[0], "dataset": resolve_dataset(m.dataset, tmp)}
    ctx = CellContext(cell, tmp, tmp)
    onnx_path, _ = export_for_cell(ctx, ctx.build_model("cpu"))
    return onnx_path, layer_groups(onnx.load(str(onnx_path))), ctx.calibration_set()


def assert_tensorrt_rtx_builds_int8(graph: Path):
    """TensorRT-RTX parses the Q/DQ graph and builds a strongly typed engine with int8 layers;
    returns the build result."""
    from harness.trt import build_engine, check_graph, detect

    rtx = detect(prefer="tensorrt_rtx")
    assert check_graph(graph, rtx, "int8") == []
    r = build_engine(graph, flavour=rtx, precision="int8", profile=(1, 1, 1))
    assert r.engine_size > 0 and r.typing == "strong"
    assert "int8" in set(r.layer_precisions.values()), r.layer_precisions
    return r
