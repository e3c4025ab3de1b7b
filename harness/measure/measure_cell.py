"""A cell's latency measurement: model time and end-to-end time, with telemetry.

Model time: the backend's ``forward`` on an input already on the device (CUDA
events on GPU).  End-to-end: preprocessing from decoded images, forward and
postprocessing to detections in original coordinates (host clock, synchronised).
Both use the same fixed batch: the first ``batch`` images, repeated if needed.
"""
from __future__ import annotations

import contextlib

from harness.measure.host import contention_warnings, impossible_e2e_warning
from harness.measure.host import sampler as host_sampler
from harness.measure.stats import summarize
from harness.measure.timing import TimingPlan, time_calls, time_end_to_end


def measure(runner, pre, images: list, ids: list, cell: dict) -> dict:
    t = cell["timing"]
    plan = TimingPlan(t["warmup"], t["iterations"], t["min_duration_s"])
    batch = cell["batch"]
    imgs = [images[i % len(images)] for i in range(batch)]
    bids = [ids[i % len(ids)] for i in range(batch)]
    prepared = pre(imgs, bids)
    device = cell["device"]
    forward = _maybe_graph(runner, prepared.inputs, t.get("cuda_graph", False))

    telemetry, tele_samples, warnings = None, [], []
    sampler, why = _sampler(device)
    if why:
        warnings.append(f"no NVML telemetry: {why}")
    host, why = host_sampler()
    if why:
        warnings.append(why)
    with host or contextlib.nullcontext():
        with runner.timing_context():
            if sampler is not None:
                with sampler:
                    model_ms = time_calls(forward, plan, device)
                telemetry = sampler.summary(images=batch * len(model_ms))
                tele_samples = sampler.samples
            else:
                model_ms = time_calls(forward, plan, device)
        e2e_ms = (time_end_to_end(lambda: runner.infer(pre(imgs, bids)), _e2e_plan(plan), device)
                  if t.get("e2e", True) else None)
    model = summarize(model_ms, batch, t["cv_warn"])
    if model["unstable"]:
        warnings.append(f"model latency unstable: coefficient of variation {model['cv']:.1%} > "
                        f"{t['cv_warn']:.0%} (busy host, throttling or unlocked clocks)")
    out = {"latency": {**model, "timer": "cuda_event" if device.startswith("cuda") else "perf_counter_ns",
                       "cuda_graph": getattr(forward, "graphed", False)},
           "samples": {"model": model_ms}, "telemetry": telemetry,
           "telemetry_samples": tele_samples, "warnings": warnings}
    if e2e_ms is not None:
        out["latency_e2e"] = {**summarize(e2e_ms, batch, t["cv_warn"]), "timer": "perf_counter_ns"}
        out["samples"]["e2e"] = e2e_ms
        warnings.extend(impossible_e2e_warning(model["median_ms"], out["latency_e2e"]["median_ms"]))
    if host is not None:
        summary = host.summary()
        out["telemetry"] = {**(out["telemetry"] or {}), "host": summary}
        warnings.extend(contention_warnings(summary))
    peak = _peak_memory_mb(device)
    if peak is not None:
        extra = {"torch_peak_memory_mb": peak}
        engine_mem = getattr(getattr(runner, "info", None), "facts", {}).get("engine_memory")
        if engine_mem:
            # torch's allocator never sees TensorRT's own allocations (weights, context memory)
            extra["torch_peak_memory_scope"] = "torch allocations only (I/O buffers); see engine_memory"
            extra["engine_context_memory_mb"] = round(engine_mem.get("context_device_memory_bytes", 0) / 2**20, 1)
            extra["engine_weights_mb_upper_bound"] = round(engine_mem.get("weights_bytes_upper_bound", 0) / 2**20, 1)
        out["telemetry"] = {**(out["telemetry"] or {}), **extra}
    return out


def _e2e_plan(plan: TimingPlan) -> TimingPlan:
    """End-to-end samples are slower and host-bound: fewer of them tell the same story."""
    return TimingPlan(max(1, plan.warmup // 2), max(5, plan.iterations // 2), 0.0)


def _maybe_graph(runner, inputs, use_graph: bool):
    """Capture the forward into a CUDA graph when asked and supported; else call it directly."""
    if use_graph and hasattr(runner, "graphed_forward"):
        replay = runner.graphed_forward(inputs)
        if replay is not None:
            def graphed():
                replay()
            graphed.graphed = True
            return graphed
    return runner.bind_forward(inputs)


def _sampler(device: str):
    """The NVML sampler for a GPU cell, or (None, why): telemetry is optional, latency is not."""
    if not device.startswith("cuda"):
        return None, None
    try:
        from harness.measure.telemetry import NvmlSampler

        import torch

        return NvmlSampler(torch.device(device).index or 0), None
    except Exception as exc:  # NVML absent or restricted: say so in the cell's warnings
        return None, f"{type(exc).__name__}: {exc}"


def _peak_memory_mb(device: str):
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20
