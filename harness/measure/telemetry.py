"""GPU telemetry from NVML, sampled in a thread while a timed loop runs.

Power and clocks explain latency: a run that throttled (power cap, thermal)
or ran at idle clocks is not comparable with one that did not, so every GPU
cell carries what NVML saw during its own timed loop.

NVML numbers GPUs physically, CUDA numbers the ones ``CUDA_VISIBLE_DEVICES``
leaves visible (Ray gives each task its own list): ``cuda:0`` of a task that
was handed GPU 3 is NVML's GPU 3.  :func:`nvml_handle` resolves a CUDA ordinal
to the physical GPU by UUID (the UUID CUDA reports, else the entry of
``CUDA_VISIBLE_DEVICES``), so telemetry and provenance read the GPU the cell ran on.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Mapping, Optional

_THROTTLE_BITS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
    0x8: "hw_slowdown", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}


def decode_throttle(mask: int) -> list[str]:
    return [name for bit, name in _THROTTLE_BITS.items() if mask & bit]


def visible_devices(env: Optional[Mapping[str, str]] = None) -> Optional[list[str]]:
    """The entries of ``CUDA_VISIBLE_DEVICES`` (None when unset: every GPU, in NVML order).

    CUDA stops at the first empty entry, so does this.
    """
    raw = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries = []
    for entry in raw.split(","):
        if not entry.strip():
            break
        entries.append(entry.strip())
    return entries


def cuda_uuid(ordinal: int) -> Optional[str]:
    """The UUID CUDA reports for ``cuda:<ordinal>`` (``GPU-...``), when torch already runs CUDA."""
    torch = sys.modules.get("torch")  # never import torch here: telemetry stays light
    try:
        if torch is None or not torch.cuda.is_initialized():
            return None
        uuid = str(torch.cuda.get_device_properties(ordinal).uuid)
    except Exception:  # an old torch without .uuid, or no CUDA
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def nvml_handle(nvml, ordinal: int, *, uuid: Optional[str] = None,
                env: Optional[Mapping[str, str]] = None):
    """``(handle, how)``: the NVML handle of the GPU a process calls ``cuda:<ordinal>``.

    ``how`` says what decided it: ``cuda_uuid`` (the UUID CUDA reported),
    ``CUDA_VISIBLE_DEVICES`` (its entry: a physical index or a UUID or UUID
    prefix, as CUDA accepts) or ``ordinal`` (no remapping in force).  An
    integer entry is NVML's index, which is CUDA's order when all GPUs are of
    one model (or with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``); the UUID path has no
    such caveat.
    """
    if uuid:
        return nvml.nvmlDeviceGetHandleByUUID(uuid), "cuda_uuid"
    entries = visible_devices(env)
    if entries is None:
        return nvml.nvmlDeviceGetHandleByIndex(ordinal), "ordinal"
    if not 0 <= ordinal < len(entries):
        raise LookupError(f"cuda:{ordinal} is not visible: CUDA_VISIBLE_DEVICES="
                          f"{','.join(entries)!r} makes {len(entries)} GPU(s) visible")
    entry = entries[ordinal]
    if entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry)), "CUDA_VISIBLE_DEVICES"
    return _handle_by_uuid_prefix(nvml, entry), "CUDA_VISIBLE_DEVICES"


def _handle_by_uuid_prefix(nvml, entry: str):
    """CUDA accepts any unique prefix of a UUID (``GPU-8f3a``) in ``CUDA_VISIBLE_DEVICES``."""
    wanted = entry if entry.startswith(("GPU-", "MIG-")) else f"GPU-{entry}"
    found = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        if _text(nvml.nvmlDeviceGetUUID(handle)).startswith(wanted):
            found.append(handle)
    if len(found) != 1:
        raise LookupError(f"CUDA_VISIBLE_DEVICES entry {entry!r} matches {len(found)} GPUs' UUIDs")
    return found[0]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSampler:
    """Context manager: samples one GPU every ``interval_s`` until exit.

    ``device_index`` is the CUDA ordinal (``cuda:N``); the physical GPU is
    found through :func:`nvml_handle`.
    """

    def __init__(self, device_index: int = 0, interval_s: float = 0.02):
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()
        self.handle, self.resolved_by = nvml_handle(pynvml, device_index,
                                                    uuid=cuda_uuid(device_index))
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self.throttle_mask = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "NvmlSampler":
        self._energy0 = self._energy_mj()
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.energy_j = None
        e1 = self._energy_mj()
        if self._energy0 is not None and e1 is not None:
            self.energy_j = (e1 - self._energy0) / 1000.0
        self.elapsed_s = time.perf_counter() - self._t0

    def _energy_mj(self):
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except self.nvml.NVMLError:
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._read())
            self._stop.wait(self.interval_s)

    def _read(self) -> dict:
        n, h = self.nvml, self.handle
        util = n.nvmlDeviceGetUtilizationRates(h)
        mask = n.nvmlDeviceGetCurrentClocksThrottleReasons(h)
        self.throttle_mask |= mask
        return {"t_s": time.perf_counter() - self._t0,
                "power_w": n.nvmlDeviceGetPowerUsage(h) / 1000.0,
                "sm_clock_mhz": float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
                "mem_clock_mhz": float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
                "temp_c": float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
                "mem_used_mb": n.nvmlDeviceGetMemoryInfo(h).used / 2**20,
                "gpu_util": float(util.gpu)}

    def summary(self, images: int) -> dict:
        """Averages and extremes over the loop; energy per image from the energy counter."""
        s = self.samples
        if not s:
            return {"samples": 0}

        def col(k):
            return [x[k] for x in s]

        power = col("power_w")
        energy = self.energy_j if self.energy_j is not None else sum(power) / len(power) * self.elapsed_s
        return {"samples": len(s), "power_avg_w": sum(power) / len(power), "power_max_w": max(power),
                "energy_j": energy, "energy_per_image_j": energy / images if images else None,
                "energy_source": "nvml_counter" if self.energy_j is not None else "power_integral",
                "sm_clock_avg_mhz": sum(col("sm_clock_mhz")) / len(s),
                "sm_clock_min_mhz": min(col("sm_clock_mhz")),
                "mem_clock_avg_mhz": sum(col("mem_clock_mhz")) / len(s),
                "temp_max_c": max(col("temp_c")), "mem_used_max_mb": max(col("mem_used_mb")),
                "gpu_util_avg": sum(col("gpu_util")) / len(s),
                "throttle_reasons": decode_throttle(self.throttle_mask & ~0x1)}
