"""GPU-only checks. They skip on CPU with the reason; on a GPU machine they were run with
`python -m pytest tests/test_gpu.py -rs` and the output is kept in benchmarks/results/."""
from __future__ import annotations

import pytest

from conftest import ROOT, has_module, run_cli


def _cuda() -> bool:
    if not has_module("torch"):
        return False
    import torch

    return torch.cuda.is_available()


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")]


@pytest.fixture(scope="module")
def gpu_cells(tmp_path_factory):
    from harness.store import Store

    tmp = tmp_path_factory.mktemp("gpu")
    fixture = ROOT / "fixtures" / "yolov8_synth"
    (tmp / "m.yaml").write_text(f"""
name: gpu-test
models: [{{name: yolov8_synth, config: {fixture / 'config.py'}, checkpoint: {fixture / 'yolov8_synth.pth'}}}]
backends: [pytorch, onnxruntime]
batch_sizes: [1, 8]
image_sizes: [320]
devices: [cuda]
exclude: [{{backend: pytorch, batch: 1}}]
dataset: {{synth: {{images: 100, seed: 2, size: 320}}}}
timing: {{warmup: 10, iterations: 50}}
""")
    r = run_cli("run", "m.yaml", cwd=tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    store = Store(f"sqlite:///{tmp}/results.db", readonly=True)
    return {c.key: c for c in store.cells(store.get_run("latest").id)}


def test_pytorch_cuda_latency_is_cuda_events_with_telemetry(gpu_cells):
    cell = gpu_cells["yolov8_synth/pytorch/fp32/b8/s320/cuda/nms-none"]
    assert cell.status == "ok"
    assert cell.latency["timer"] == "cuda_event" and cell.latency["n"] >= 50
    t = cell.telemetry
    assert t["samples"] > 0 and 10 < t["power_avg_w"] < 1500
    assert 100 < t["sm_clock_avg_mhz"] < 4000 and t["energy_per_image_j"] > 0
    assert cell.provenance["gpu_name"] and cell.provenance["gpu_uuid"].startswith("GPU-")


def test_onnxruntime_cuda_ep_matches_pytorch_ap(gpu_cells):
    ref = gpu_cells["yolov8_synth/pytorch/fp32/b8/s320/cuda/nms-none"]
    for batch in (1, 8):
        ort = gpu_cells[f"yolov8_synth/onnxruntime/fp32/b{batch}/s320/cuda/nms-none"]
        assert ort.status == "ok", (ort.error, ort.log_tail)
        assert ort.provenance["providers"][0] == "CUDAExecutionProvider"
        assert abs(ort.metrics["AP"] - ref.metrics["AP"]) <= 0.002, (ort.metrics["AP"], ref.metrics["AP"])
        assert ort.latency["timer"] == "cuda_event"
