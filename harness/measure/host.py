"""Host contention during timing: load average, per-CPU use and other processes' CPU share.

A latency measured while something else used the cores is not comparable with
one taken on a quiet host, and a busy host does not always show as a high
coefficient of variation (a steady competitor slows every sample alike).  So,
like pyperf's system check, every cell records what the host did while it was
timed and warns when it was busy.  Sampled with psutil in a thread (what pyperf
uses); the decision is the pure :func:`contention_warnings`.
"""
from __future__ import annotations

import os
import threading
import time

#: other processes above this many cores (averaged over the timed loop) make the host "busy"
OTHER_CORES_LIMIT = 0.2
MAX_STORED_SAMPLES = 200
TOP_PROCESSES = 5


class HostSampler:
    """Context manager: samples the host every ``interval_s`` until exit; see :meth:`summary`."""

    def __init__(self, interval_s: float = 0.25):
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="detbench-host", daemon=True)

    def __enter__(self) -> "HostSampler":
        self._procs0 = self._process_times()
        self._t0 = self._last_t = time.perf_counter()
        self._busy0 = self._last_busy = self._busy_s()
        self._own0 = self._last_own = self._own_s()
        self.psutil.cpu_percent(percpu=True)  # starts psutil's per-CPU interval
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self._read())
        self.elapsed_s = time.perf_counter() - self._t0
        self.other_cores_avg = _other_cores(self._busy_s() - self._busy0, self._own_s() - self._own0,
                                            self.elapsed_s)
        self.top = _top_others(self._procs0, self._process_times(), self.elapsed_s, self.me.pid)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self._read())

    def _read(self) -> dict:
        t, busy, own = time.perf_counter(), self._busy_s(), self._own_s()
        other = _other_cores(busy - self._last_busy, own - self._last_own, t - self._last_t)
        self._last_t, self._last_busy, self._last_own = t, busy, own
        return {"t_s": t - self._t0, "load1": os.getloadavg()[0], "other_cores": other,
                "cpu_percent": self.psutil.cpu_percent(percpu=True)}

    def _busy_s(self) -> float:
        c = self.psutil.cpu_times()
        return sum(getattr(c, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))

    def _own_s(self) -> float:
        c = self.me.cpu_times()
        return c.user + c.system

    def _process_times(self) -> dict[int, tuple[str, float]]:
        out = {}
        for proc in self.psutil.process_iter(["name", "cpu_times"]):
            times = proc.info.get("cpu_times")
            if times is not None:
                out[proc.pid] = (proc.info.get("name") or "?", times.user + times.system)
        return out

    def summary(self) -> dict:
        s = self.samples
        per_cpu = list(zip(*[x["cpu_percent"] for x in s])) if s else []
        stored = s[:: max(1, -(-len(s) // MAX_STORED_SAMPLES))]
        return {"samples": len(s), "interval_s": self.interval_s, "elapsed_s": self.elapsed_s,
                "cpu_count": os.cpu_count(),
                "load1_start": s[0]["load1"] if s else None,
                "load1_max": max(x["load1"] for x in s) if s else None,
                "other_cores_avg": self.other_cores_avg,
                "other_cores_max": max(x["other_cores"] for x in s) if s else None,
                "cpu_percent_avg": [sum(c) / len(c) for c in per_cpu],
                "top_other_processes": self.top,
                "series": [{k: x[k] for k in ("t_s", "load1", "other_cores")} for x in stored]}


def _other_cores(busy_delta_s: float, own_delta_s: float, wall_s: float) -> float:
    """CPU seconds used by everyone but this process, per wall second (= cores)."""
    return max(0.0, busy_delta_s - own_delta_s) / wall_s if wall_s > 0 else 0.0


def _top_others(before: dict, after: dict, wall_s: float, me: int) -> list[dict]:
    rows = []
    for pid, (name, cpu) in after.items():
        if pid == me or pid not in before or wall_s <= 0:
            continue
        cores = (cpu - before[pid][1]) / wall_s
        if cores >= 0.05:
            rows.append({"pid": pid, "name": name, "cores": round(cores, 3)})
    return sorted(rows, key=lambda r: -r["cores"])[:TOP_PROCESSES]


def contention_warnings(host: dict, *, other_cores_limit: float = OTHER_CORES_LIMIT) -> list[str]:
    """The warnings a cell gets for its host's state during timing (empty when quiet)."""
    if not host or not host.get("samples"):
        return []
    out = []
    other, cores = host.get("other_cores_avg"), host.get("cpu_count") or 1
    if other is not None and other > other_cores_limit:
        top = ", ".join(f"{p['name']} (pid {p['pid']}) {p['cores']:.2f}"
                        for p in host.get("top_other_processes", [])[:3])
        out.append(f"host busy during timing: other processes used {other:.2f} cores on average "
                   f"(limit {other_cores_limit:.2f})" + (f"; top: {top}" if top else "") +
                   " — latencies may be inflated; rerun on a quiet host")
    load = host.get("load1_max")
    if load is not None and load > cores:
        out.append(f"host overloaded during timing: 1-minute load average {load:.2f} on "
                   f"{cores} CPUs — latencies may be inflated; rerun on a quiet host")
    return out


def impossible_e2e_warning(model_median_ms: float | None, e2e_median_ms: float | None) -> list[str]:
    """End-to-end time includes the model time: a smaller median means the timings are unreliable."""
    if model_median_ms is None or e2e_median_ms is None or e2e_median_ms >= model_median_ms:
        return []
    return [f"end-to-end median {e2e_median_ms:.3f} ms is below the model median "
            f"{model_median_ms:.3f} ms, which is impossible: the host's load changed between the "
            "two measurements (or the clocks did); do not trust these latencies"]


def sampler() -> tuple[HostSampler | None, str | None]:
    """A host sampler, or (None, why) when psutil is missing."""
    try:
        return HostSampler(), None
    except ImportError:
        return None, "host contention not checked: psutil is not installed (pip install psutil)"
