"""Timed loops: warm-up, then samples until both a count and a duration are reached.

On CUDA each sample is the GPU time between two CUDA events recorded on the
current stream around the model call: host clocks around asynchronous GPU
work measure the launch, not the work.  On CPU, ``perf_counter_ns``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

# One definition of each timed region, identical for every backend; stored with every cell.
MODEL_REGION = "model+decode"          # input tensor on the device -> decoded boxes + scores
MODEL_NMS_REGION = "model+decode+nms"  # the same, for graphs that end in NMS (nms != none)
E2E_REGION = "e2e"                     # decoded image in host memory -> final detections,
                                       # original coordinates (preprocess + model + postprocess)
REGION_TEXT = {
    MODEL_REGION: "input tensor on the device -> decoded boxes + scores (backbone, neck, head, "
                  "box decoding; no NMS)",
    MODEL_NMS_REGION: "input tensor on the device -> final per-image detections of the graph "
                      "(decoding + in-graph NMS)",
    E2E_REGION: "decoded image in host memory -> final detections in original image coordinates "
                "(preprocessing, model, postprocessing incl. NMS, synchronised)",
}


def model_region(nms: str) -> str:
    """The model-time region of a cell: in-graph NMS variants time model + NMS and say so."""
    return MODEL_REGION if nms == "none" else MODEL_NMS_REGION


@dataclass(frozen=True)
class TimingPlan:
    warmup: int = 10
    iterations: int = 50
    min_duration_s: float = 0.0
    max_iterations: int = 100_000


def time_calls(fn: Callable[[], object], plan: TimingPlan, device: str) -> list[float]:
    """Run ``fn`` repeatedly and return per-call latencies in milliseconds."""
    for _ in range(plan.warmup):
        fn()
    if device.startswith("cuda"):
        return _time_cuda(fn, plan)
    return _time_host(fn, plan)


def _enough(n: int, started: float, plan: TimingPlan) -> bool:
    if n >= plan.max_iterations:
        return True
    return n >= plan.iterations and time.perf_counter() - started >= plan.min_duration_s


def _time_host(fn, plan: TimingPlan) -> list[float]:
    samples: list[float] = []
    started = time.perf_counter()
    while not _enough(len(samples), started, plan):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return samples


def _time_cuda(fn, plan: TimingPlan) -> list[float]:
    """Events are read only after the loop so the host never stalls between samples."""
    import torch

    torch.cuda.synchronize()
    pairs = []
    started = time.perf_counter()
    while not _enough(len(pairs), started, plan):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
        if len(pairs) % 64 == 0:
            end.synchronize()  # bound the queue; keeps min_duration_s meaningful
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in pairs]


def time_end_to_end(fn: Callable[[], object], plan: TimingPlan, device: str) -> list[float]:
    """Host wall time of a call that includes host work (pre/post-processing), synchronised."""
    sync = _cuda_sync if device.startswith("cuda") else (lambda: None)

    def call():
        fn()
        sync()

    for _ in range(plan.warmup):
        call()
    return _time_host(call, plan)


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()
