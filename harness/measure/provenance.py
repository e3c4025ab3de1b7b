"""Provenance captured automatically for every run and cell.

A latency or AP number is only comparable with another when the software,
the hardware and the inputs are known: versions, GPU identity and clocks,
the git sha of the harness, and content hashes of every file that fed it.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

PACKAGES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-rtx-cu13-bindings",
            "mmcv-lite", "mmcv", "mmengine", "mmdet", "mmyolo", "numpy", "opencv-python",
            "pycocotools", "nvidia-modelopt", "onnxslim")


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex, first 16 chars are shown, all 64 stored)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding harness/
BUILD_SHA_FILE = Path(__file__).resolve().parents[1] / "_build_sha.txt"  # written by setup.py


def git_sha(repo: str | Path | None = None) -> str | None:
    """detbench's own commit (with '-dirty' when its tree has changes), never the cwd's.

    In order: ``DETBENCH_GIT_SHA`` (a copy of the tree without ``.git``: a CI
    artifact, a GPU box); the git checkout detbench is imported from, only if
    that checkout's top level *is* the folder holding ``harness/`` (an installed
    copy inside someone else's repository, e.g. a project's virtualenv, does not
    count); the sha written into the package when it was built
    (``harness/_build_sha.txt``); else None.
    """
    if os.environ.get("DETBENCH_GIT_SHA"):
        return os.environ["DETBENCH_GIT_SHA"]
    root = Path(repo).resolve() if repo else _PACKAGE_ROOT
    sha = _checkout_sha(root)
    if sha:
        return sha
    try:
        return BUILD_SHA_FILE.read_text().strip() or None
    except OSError:
        return None


def _checkout_sha(root: Path) -> str | None:
    # GIT_DIR & co. (set inside git hooks, for example) would point git at another repository
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True,
                              timeout=10)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
            return None
        head = git("rev-parse", "--verify", "-q", "HEAD")
        sha = head.stdout.strip() if head.returncode == 0 else ""
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) if sha else None


def host_environment() -> dict:
    """What the orchestrating process can see without importing torch."""
    return {"host": socket.gethostname(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "packages": package_versions()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def device_environment(device: str) -> dict:
    """torch/CUDA/GPU facts, gathered inside a cell's worker where torch is loaded."""
    import torch

    env = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        env.update({"gpu_name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                    "gpu_memory_gb": round(props.total_memory / 2**30, 1)})
        env.update(_nvml_facts(idx))
    return env


def _nvml_facts(idx: int) -> dict:
    """NVML facts of the GPU the process calls ``cuda:<idx>``, found by UUID (see telemetry)."""
    from harness.measure.telemetry import cuda_uuid, nvml_handle, visible_devices

    visible = visible_devices()
    try:
        import pynvml

        pynvml.nvmlInit()
        h, how = nvml_handle(pynvml, idx, uuid=cuda_uuid(idx))
        return {"gpu_uuid": pynvml.nvmlDeviceGetUUID(h), "nvml_index": pynvml.nvmlDeviceGetIndex(h),
                "gpu_resolved_by": how,
                "cuda_visible_devices": ",".join(visible) if visible is not None else None,
                "driver": pynvml.nvmlSystemGetDriverVersion(),
                "cuda_driver": pynvml.nvmlSystemGetCudaDriverVersion_v2(),
                "sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                "mem_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM),
                "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
                "persistence_mode": pynvml.nvmlDeviceGetPersistenceMode(h)}
    except Exception as exc:  # NVML missing or restricted: record why, keep going
        return {"nvml_error": repr(exc)}
