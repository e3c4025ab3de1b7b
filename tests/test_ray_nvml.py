"""NVML reads the GPU a cell ran on, found by UUID through CUDA_VISIBLE_DEVICES (as Ray remaps it).

A faked NVML with three physical GPUs, each with its own UUID and power draw:
``cuda:0`` of a process that sees ``CUDA_VISIBLE_DEVICES=1`` (Ray's way of
handing a task GPU 1) must read physical GPU 1, in provenance and telemetry.
"""
from __future__ import annotations

import types

import pytest

from harness.measure import provenance, telemetry

UUIDS = ["GPU-aaaa0000-0000-0000-0000-000000000000", "GPU-bbbb1111-1111-1111-1111-111111111111",
         "GPU-cccc2222-2222-2222-2222-222222222222"]
POWER_MW = [100_000, 211_000, 322_000]


class _Handle:
    def __init__(self, index):
        self.index = index


def fake_nvml() -> types.ModuleType:
    n = types.ModuleType("pynvml")
    n.NVMLError = type("NVMLError", (Exception,), {})
    n.NVML_CLOCK_SM, n.NVML_CLOCK_MEM, n.NVML_TEMPERATURE_GPU = 0, 1, 0
    n.nvmlInit = lambda: None
    n.nvmlDeviceGetCount = lambda: len(UUIDS)

    def by_index(i):
        if not 0 <= i < len(UUIDS):
            raise n.NVMLError(f"no GPU {i}")
        return _Handle(i)

    def by_uuid(uuid):
        if uuid not in UUIDS:
            raise n.NVMLError(f"no GPU {uuid}")
        return _Handle(UUIDS.index(uuid))

    n.nvmlDeviceGetHandleByIndex = by_index
    n.nvmlDeviceGetHandleByUUID = by_uuid
    n.nvmlDeviceGetUUID = lambda h: UUIDS[h.index]
    n.nvmlDeviceGetIndex = lambda h: h.index
    n.nvmlSystemGetDriverVersion = lambda: "999.1"
    n.nvmlSystemGetCudaDriverVersion_v2 = lambda: 13000
    n.nvmlDeviceGetMaxClockInfo = lambda h, kind: 1000 + h.index
    n.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    n.nvmlDeviceGetPersistenceMode = lambda h: 1
    n.nvmlDeviceGetTotalEnergyConsumption = lambda h: 0
    n.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=10 * h.index)
    n.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: 0
    n.nvmlDeviceGetPowerUsage = lambda h: POWER_MW[h.index]
    n.nvmlDeviceGetClockInfo = lambda h, kind: 1500.0 + h.index
    n.nvmlDeviceGetTemperature = lambda h, kind: 40 + h.index
    n.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2**20 * (h.index + 1))
    return n


@pytest.fixture
def nvml(monkeypatch):
    module = fake_nvml()
    monkeypatch.setitem(__import__("sys").modules, "pynvml", module)
    monkeypatch.setattr(telemetry, "cuda_uuid", lambda ordinal: None)  # no CUDA here
    return module


@pytest.mark.parametrize("visible, ordinal, physical", [
    (None, 0, 0),                                    # no remapping: the ordinal is the index
    ("1", 0, 1),                                     # Ray gave this task GPU 1
    ("2,1", 1, 1),
    (f"{UUIDS[1]},{UUIDS[0]}", 0, 1),                # a UUID list
    (f"{UUIDS[1]},{UUIDS[0]}", 1, 0),
    ("GPU-bbbb", 0, 1),                              # a UUID prefix, as CUDA accepts
    ("cccc2222", 0, 2),                              # ... even without 'GPU-'
    ("1,,2", 0, 1),                                  # CUDA stops at an empty entry
])
def test_provenance_reads_the_physical_gpu(nvml, monkeypatch, visible, ordinal, physical):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    facts = provenance._nvml_facts(ordinal)
    assert facts["gpu_uuid"] == UUIDS[physical], facts
    assert facts["nvml_index"] == physical
    assert facts["sm_clock_max_mhz"] == 1000 + physical
    assert facts["gpu_resolved_by"] == ("ordinal" if visible is None else "CUDA_VISIBLE_DEVICES")
    assert facts["cuda_visible_devices"] == (None if visible is None else visible.split(",,")[0])


def test_telemetry_samples_the_physical_gpu(nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    sampler = telemetry.NvmlSampler(0, interval_s=0.001)
    with sampler:
        pass
    summary = sampler.summary(images=1)
    assert summary["power_avg_w"] == pytest.approx(POWER_MW[1] / 1000)
    assert summary["sm_clock_avg_mhz"] == 1501.0
    assert sampler.resolved_by == "CUDA_VISIBLE_DEVICES"


def test_the_uuid_cuda_reports_wins(nvml, monkeypatch):
    """With CUDA running, its own UUID for the device decides (no reliance on index order)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(telemetry, "cuda_uuid", lambda ordinal: UUIDS[2])
    facts = provenance._nvml_facts(0)
    assert facts["gpu_uuid"] == UUIDS[2] and facts["gpu_resolved_by"] == "cuda_uuid"


def test_an_invisible_ordinal_or_unknown_uuid_is_recorded_not_guessed(nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert "cuda:1 is not visible" in provenance._nvml_facts(1)["nvml_error"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-ffff")
    assert "matches 0 GPUs" in provenance._nvml_facts(0)["nvml_error"]


def test_cuda_uuid_is_none_without_a_cuda_torch():
    assert telemetry.cuda_uuid(0) is None
