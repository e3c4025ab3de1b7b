"""Engine cache: one key per everything that changes an engine, atomic files.

An engine depends on the ONNX bytes, the precision, the batch profile, the
TensorRT flavour and version, the GPU (name and compute capability) and, for
TensorRT 10 int8, the calibration cache; ``engine_cache_key`` folds all of them
(plus any extra build options) into a file-name-safe key.  ``cached_engine``
builds on a miss, under a per-key lock so that parallel runners build once, and
writes ``<key>.engine``, ``<key>.log`` and ``<key>.json`` (metadata, written last:
an engine without its metadata is rebuilt).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Callable, Mapping

from harness.errors import UserError

CACHE_FORMAT = 2  # bump when the key's meaning changes (2: fp32 engines built without TF32)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def engine_cache_key(onnx_hash: str, precision: str, profile, flavour: str, flavour_version: str,
                     gpu_name: str, compute_capability, calib_cache_hash: str | None = None,
                     extra: Mapping | None = None) -> str:
    """A stable, file-name-safe key, e.g. ``fp16_b1-8-16_tensorrt-10.8.0.43_sm89_<24 hex>``.

    ``profile`` is (min, opt, max) or None; ``compute_capability`` "8.9" or (8, 9);
    ``extra`` holds further build options (workspace, builder level...) as JSON values.
    """
    cc = _cc(compute_capability)
    fields = {
        "format": CACHE_FORMAT, "onnx": str(onnx_hash), "precision": str(precision),
        "profile": list(profile) if profile is not None else None, "flavour": str(flavour),
        "version": str(flavour_version), "gpu": str(gpu_name), "cc": cc,
        "calib": calib_cache_hash, "extra": dict(extra or {}),
    }
    batch = "b" + "-".join(map(str, profile)) if profile is not None else "bstatic"
    parts = [precision, batch, f"{flavour}-{flavour_version}", "sm" + cc.replace(".", ""),
             _digest(fields)]
    return _SAFE.sub("_", "_".join(parts))


def calibration_cache_name(onnx_hash: str, flavour: str, flavour_version: str, method: str,
                           data_hash: str, gpu_name: str = "", compute_capability="") -> str:
    """File name of a TensorRT 10 INT8 calibration cache.

    The cache holds per-tensor scales keyed by the *network's tensor names*: read for
    another graph, TensorRT skips calibration and the names do not match, so layers
    silently stay in higher precision.  Hence the ONNX hash, the TensorRT version (the
    cache header names it), the method and the GPU beside the calibration images' hash
    (the entropy/min-max caches are meant to be portable across devices, but a cache
    calibrated elsewhere being ignored is reported in NVIDIA/TensorRT#3612; recalibrating
    per GPU costs seconds, a silently ignored cache costs the int8 engine).
    """
    fields = {"format": CACHE_FORMAT, "onnx": str(onnx_hash), "flavour": str(flavour),
              "version": str(flavour_version), "method": str(method), "data": str(data_hash),
              "gpu": str(gpu_name), "cc": _cc(compute_capability)}
    return _SAFE.sub("_", f"trt-{flavour_version}-{method}-{_digest(fields)}.cache")


def timing_cache_name(flavour: str, flavour_version: str, gpu_name: str, compute_capability) -> str:
    """File name of a builder timing cache: tactic timings belong to one TensorRT and one GPU."""
    cc = _cc(compute_capability)
    fields = {"format": CACHE_FORMAT, "flavour": str(flavour), "version": str(flavour_version),
              "gpu": str(gpu_name), "cc": cc}
    return _SAFE.sub("_", f"timing-{flavour}-{flavour_version}-sm{cc.replace('.', '')}-"
                          f"{_digest(fields)[:12]}.cache")


def _cc(compute_capability) -> str:
    if isinstance(compute_capability, (tuple, list)):
        return ".".join(str(int(v)) for v in compute_capability)
    return str(compute_capability)


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def cached_engine(cache_dir, key: str, build_fn: Callable) -> Path:
    """Path of the engine for ``key`` in ``cache_dir``, calling ``build_fn()`` on a miss.

    ``build_fn`` returns a :class:`~harness.trt.build.BuildResult` (or engine
    bytes).  Metadata (build time, size, sha256, log path, flavour, typing...)
    is in ``engine_meta(path)``.
    """
    if not _KEY.match(key):
        raise UserError(f"engine cache key '{key}' is not a safe file name")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    engine = cache_dir / f"{key}.engine"
    if _is_complete(engine):
        return engine
    with _locked(cache_dir / f".{key}.lock"):
        if _is_complete(engine):  # another process built it while we waited
            return engine
        _build_into(cache_dir, key, engine, build_fn)
    return engine


def engine_meta(engine_path) -> dict:
    """The metadata written beside an engine by ``cached_engine``."""
    return json.loads(Path(engine_path).with_suffix(".json").read_text())


def _is_complete(engine: Path) -> bool:
    """An engine with its metadata whose bytes match the sha256 recorded there.

    A corrupted engine (or unreadable metadata) is deleted with a recorded
    warning (:mod:`harness.cache`), so it is built again.
    """
    from harness import cache

    meta = engine.with_suffix(".json")
    if not (engine.is_file() and meta.is_file()):
        return False
    try:
        expected = json.loads(meta.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return cache.heal(engine, "its metadata is unreadable", also=(meta,))
    if meta_size(meta) != engine.stat().st_size:
        return cache.heal(engine, "its size differs from the recorded engine_size", also=(meta,))
    if not cache.verify(engine, expected):
        meta.unlink(missing_ok=True)
        return False
    return True


def _build_into(cache_dir: Path, key: str, engine: Path, build_fn: Callable) -> None:
    from harness.trt.build import BuildError, atomic_write

    t0 = time.perf_counter()
    result = build_fn()
    wall = time.perf_counter() - t0
    if isinstance(result, (bytes, bytearray, memoryview)):
        data, info = bytes(result), {"build_time_s": wall}
    else:
        if result.engine_bytes is None:
            raise BuildError("build", f"build for {key} returned no engine", result.log)
        data = result.engine_bytes
        info = {"build_time_s": result.build_time_s, "flavour": result.flavour,
                "precision": result.precision, "typing": result.typing,
                "flags": list(result.flags), "tf32": result.tf32, "profile": result.profile,
                "timing_cache": result.timing_cache, "warnings": list(result.warnings)}
        log_path = cache_dir / f"{key}.log"
        atomic_write(log_path, result.log.encode())
        info["log_path"] = str(log_path)
    atomic_write(engine, data)
    meta = {"key": key, "engine": str(engine), "engine_size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "wall_s": wall,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **info}
    atomic_write(engine.with_suffix(".json"), json.dumps(meta, indent=2).encode())


def meta_size(meta: Path):
    try:
        return json.loads(meta.read_text()).get("engine_size")
    except (OSError, ValueError, AttributeError):
        return None


def _locked(path: Path):
    from harness.cache import locked

    return locked(path)
