"""What runs on a Ray node for one cell: the same worker subprocess as a local run.

The task knows nothing of the store (workers hold no database credentials): it
runs the cell in ``python -m harness.runner.worker`` exactly like the local
executor (stage file, timeout, log tail, crash isolation), reports its stages
to a small :class:`Progress` actor so the driver knows where a cell was if its
node dies, and returns the result with the files the alignment analysis reads
(detections, decoded tensors) as bytes, so ``detbench compare`` works on the
driver's machine.  Caches (datasets, ONNX exports, engines, calibration) live
in the node's own cache directory and are reused by later cells on that node.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from harness import __version__
from harness.runner import orchestrator

#: artifacts ``detbench compare`` reads; shipped back to the driver with the result
SHIPPED = ("detections", "decoded", "decoded_metas")
REPORT_TIMEOUT_S = 10.0


class Progress:
    """Ray actor: tasks report (cell id, kind, value); the driver drains the events."""

    def __init__(self) -> None:
        self._events: list[tuple[int, str, object]] = []

    def report(self, cell_id: int, kind: str, value: object) -> None:
        self._events.append((cell_id, kind, value))

    def drain(self) -> list[tuple[int, str, object]]:
        events, self._events = self._events, []
        return events


def run_cell(run_id: str, cell_id: int, key: str, params: dict, cache_hint: str, env: dict,
             progress) -> dict:
    """One cell on this node; the worker's result dict plus ``files`` and the node's facts."""
    import ray

    node = {"name": "ray", "host": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "planned_device": params["device"],
            "detbench_version": __version__, "niceness": os.nice(0), "started_at": time.time()}
    report = _reporter(progress, cell_id)
    report("started", node)
    cache_dir = Path(os.environ.get("DETBENCH_CACHE") or cache_hint).resolve()
    node["cache_dir"] = str(cache_dir)
    started = time.time()
    problem = localise(params, cache_dir, node["host"])
    if problem:
        result = {"status": "failed", "stage": "load", "error": problem}
    else:
        work_dir = orchestrator.work_dir_for(cache_dir, run_id, key)
        node["work_dir"] = str(work_dir)
        result = orchestrator.run_cell_process(work_dir, params, cache_dir,
                                               lambda stage: report("stage", stage), env)
        result["files"] = _files(result.get("artifacts") or {})
    result.setdefault("duration_s", time.time() - started)
    result["provenance"] = {**(result.get("provenance") or {}), "executor": node}
    return result


def _reporter(progress, cell_id: int):
    """Report to the driver and wait until it is recorded, so a node dying right after a stage
    change still has that stage on record; a lost progress actor never stops the cell."""
    import ray
    from ray.exceptions import RayError  # GetTimeoutError is one

    def report(kind: str, value: object) -> None:
        try:
            ray.get(progress.report.remote(cell_id, kind, value), timeout=REPORT_TIMEOUT_S)
        except RayError:
            pass

    return report


def localise(params: dict, cache_dir: Path, host: str) -> str | None:
    """Fit the cell to this node: its one GPU, its cache; None, or why the node cannot run it.

    Ray hands a GPU task exactly one GPU through ``CUDA_VISIBLE_DEVICES``, so
    ``cuda:N`` of the plan is ``cuda:0`` here.  A synthetic dataset is
    generated into this node's cache (same parameters, same files); every other
    file of the matrix must exist at the same path on every node.
    """
    if params["device"].startswith("cuda"):
        params["device"] = "cuda:0"
    dataset = params.get("dataset") or {}
    if dataset.get("synth") and not Path(dataset["annotations"]).is_file():
        from harness.data.datasets import synth_dataset

        synth = dataset["synth"]
        images, ann = synth_dataset(synth["images"], synth["seed"], synth["size"], cache_dir)
        params["dataset"] = {**dataset, "images": str(images), "annotations": str(ann)}
    for where, path in _needed_files(params):
        if not Path(path).exists():
            return (f"{where} '{path}' is not on Ray node {host}: every node needs the matrix's "
                    "files at the same path (a shared filesystem or the same checkout)")
    return None


def _needed_files(params: dict) -> list[tuple[str, str]]:
    spec, dataset = params.get("model_spec") or {}, params.get("dataset") or {}
    source = (params.get("calibration") or {}).get("source") or {}
    files = [("model config", spec.get("config")), ("dataset.images", dataset.get("images")),
             ("dataset.annotations", dataset.get("annotations"))]
    if not source.get("synth"):  # a synthetic source is generated into the node's cache
        files += [("calibration.source.images", source.get("images")),
                  ("calibration.source.annotations", source.get("annotations"))]
    if spec.get("checkpoint") != "random":
        files.append(("model checkpoint", spec.get("checkpoint")))
    return [(where, str(path)) for where, path in files if path]


def _files(artifacts: dict) -> dict[str, tuple[str, bytes]]:
    out = {}
    for name in SHIPPED:
        path = artifacts.get(name)
        if path and Path(path).is_file():
            out[name] = (Path(path).name, Path(path).read_bytes())
    return out
