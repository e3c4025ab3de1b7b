"""Which TensorRT is importable here, and what its builder can do.

Two Python modules can build engines from ONNX:

* ``tensorrt`` (NVIDIA's TensorRT).  10.x still has weak typing (``BuilderFlag.FP16``
  / ``INT8``) and the ``IInt8*Calibrator`` classes (deprecated since 10.1);
  11.x removed both: strong typing is always on (``STRONGLY_TYPED`` is accepted
  and ignored), fp16 comes from an fp16 ONNX (ModelOpt AutoCast) and int8 from
  explicit Q/DQ nodes.  Sources: docs.nvidia.com/deeplearning/tensorrt/latest/
  api/migration/tensorrt-10x-to-11x-python-api-reference.html and
  .../11.0.0/_static/python-api/infer/Core/Builder.html.
* ``tensorrt_rtx_bindings`` (TensorRT for RTX, from PyPI).  Strongly typed only,
  no precision flags, no calibrators, a plugin registry without the NMS plugins,
  and a builder that runs on machines without a GPU (its runtime cannot).

Capabilities are read from the module (attributes, plugin registry, a TopK probe)
rather than inferred from the version alone, so a minor release that changes
them is seen as it is.  Nothing here imports TensorRT until ``detect`` is called.
"""
from __future__ import annotations

import functools
import os
import importlib
import warnings
from dataclasses import dataclass, field
from typing import Any

# TensorRT's documented ITopKLayer limit, k <= 3840, for TensorRT 10.x (operator
# docs: docs.nvidia.com/deeplearning/tensorrt/latest/_static/operators/TopK.html);
# TensorRT 8.6's operator docs said k <= 1024.  Used only when the probe below
# cannot run (for example TensorRT 10 on a machine without a GPU).
DOCUMENTED_TOPK_MAX = 3840
DOCUMENTED_TOPK_SOURCE = ("documented: TensorRT operator reference, TopK: 'k <= 3840' "
                          "(docs.nvidia.com/deeplearning/tensorrt/latest/_static/operators/TopK.html)")

# Module names tried for each flavour, in order.
_MODULES = {
    "tensorrt": ("tensorrt",),
    "tensorrt_rtx": ("tensorrt_rtx_bindings", "tensorrt_rtx"),
}
_DEFAULT_ORDER = ("tensorrt", "tensorrt_rtx")  # a GPU machine with both wants full TensorRT
_LABELS = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}

_failures: dict[str, str] = {}


@dataclass(frozen=True)
class TrtFlavour:
    """One importable TensorRT and what its builder supports.

    ``plugins`` is a frozenset (the dataclass is frozen and hashable);
    ``module`` is the imported Python module and takes no part in equality.
    """

    name: str                      # 'tensorrt' | 'tensorrt_rtx'
    version: str
    module: Any = field(repr=False, compare=False, hash=False)
    strongly_typed_only: bool = True
    has_calibrators: bool = False
    topk_max: int | None = DOCUMENTED_TOPK_MAX
    plugins: frozenset = frozenset()
    topk_max_source: str = DOCUMENTED_TOPK_SOURCE
    module_name: str = ""

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    @property
    def label(self) -> str:
        """'TensorRT 10.8.0.43', 'TensorRT-RTX 1.7.1.116'."""
        return f"{_LABELS.get(self.name, self.name)} {self.version}"

    @property
    def weak_typing(self) -> bool:
        return not self.strongly_typed_only


def detect(prefer: str | None = None) -> TrtFlavour | None:
    """The TensorRT to build with, or None (then ``why_unavailable()`` says why).

    ``prefer`` ('tensorrt' or 'tensorrt_rtx') is tried first and the other one
    after it; by default full TensorRT comes first.  Check ``flavour.name`` when
    only one kind will do.  Results are cached per process.
    """
    if prefer is not None and prefer not in _MODULES:
        from harness.errors import UserError

        raise UserError(f"unknown TensorRT flavour '{prefer}': choose tensorrt or tensorrt_rtx")
    order = (prefer,) + tuple(n for n in _DEFAULT_ORDER if n != prefer) if prefer else _DEFAULT_ORDER
    for name in _allowed(order):
        flavour = _load(name)
        if flavour is not None:
            return flavour
    return None


def _allowed(order):
    """``DETBENCH_TENSORRT`` = tensorrt | tensorrt_rtx | none pins the flavour on a machine with
    several (or hides TensorRT, to see what a matrix does where it is absent)."""
    pinned = os.environ.get("DETBENCH_TENSORRT")
    if not pinned:
        return order
    return tuple(n for n in order if n == pinned)


def why_unavailable() -> str:
    """'' when some TensorRT is importable, else one line naming each failure and the fix."""
    if os.environ.get("DETBENCH_TENSORRT") == "none":
        return "DETBENCH_TENSORRT=none hides every TensorRT installation"
    if any(_load(name) is not None for name in _allowed(_DEFAULT_ORDER)):
        return ""
    parts = "; ".join(f"{name}: {_failures.get(name, 'not tried')}" for name in _DEFAULT_ORDER)
    return (f"no TensorRT Python module can be imported ({parts}). Install NVIDIA TensorRT "
            f"(pip install tensorrt-cu12 from pypi.nvidia.com) on a GPU machine, or "
            f"TensorRT-RTX (pip install -e '.[tensorrt-rtx]') to check that graphs parse and build")


@functools.lru_cache(maxsize=None)
def _load(name: str) -> TrtFlavour | None:
    errors = []
    for module_name in _MODULES[name]:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, or OSError from a missing shared library
            errors.append(f"import {module_name}: {type(exc).__name__}: {exc}")
            continue
        if not hasattr(module, "Builder"):
            errors.append(f"{module_name} has no Builder (not a TensorRT build)")
            continue
        try:
            return _describe(name, module, module_name)
        except Exception as exc:
            errors.append(f"{module_name} imported but could not be inspected: {exc}")
    _failures[name] = "; ".join(errors)
    return None


def _describe(name: str, module, module_name: str) -> TrtFlavour:
    version = str(getattr(module, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    flags = getattr(module, "BuilderFlag", None)
    has_weak_flags = flags is not None and hasattr(flags, "FP16") and hasattr(flags, "INT8")
    if name == "tensorrt_rtx":
        strongly_typed_only = True
    else:
        strongly_typed_only = major >= 11 or not has_weak_flags
    has_calibrators = (not strongly_typed_only and hasattr(module, "IInt8EntropyCalibrator2")
                       and hasattr(module, "IInt8MinMaxCalibrator"))
    topk_max, source = probe_topk_max(module)
    return TrtFlavour(name=name, version=version, module=module,
                      strongly_typed_only=strongly_typed_only, has_calibrators=has_calibrators,
                      topk_max=topk_max, plugins=frozenset(registered_plugins(module)),
                      topk_max_source=source, module_name=module_name)


def registered_plugins(module) -> set[str]:
    """Plugin creator names in ``module``'s registry, after ``init_libnvinfer_plugins``.

    ``all_creators`` (TensorRT >= 10, RTX) lists IPluginCreator and IPluginCreatorV3One
    creators; ``plugin_creator_list`` (deprecated in 10.0) only the V2 ones.
    """
    from harness.trt.logger import capture_logger

    init = getattr(module, "init_libnvinfer_plugins", None)
    if init is not None:
        logger = capture_logger(module, "warning")
        try:
            init(logger, "")
        except Exception:
            pass  # registry may still hold the built-in creators
        _keep_alive.append(logger)  # TensorRT may keep the logger pointer
    registry = module.get_plugin_registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        creators = getattr(registry, "all_creators", None)
        if creators is None:
            creators = getattr(registry, "plugin_creator_list", [])
    return {str(c.name) for c in creators}


_keep_alive: list = []


# A probe result below this is not TensorRT's TopK limit but something else refusing K
# (TensorRT 8.6 documented k <= 1024; every TensorRT 10/11 and RTX says 3840).
TOPK_PROBE_FLOOR = 1024


def probe_topk_max(module) -> tuple[int | None, str]:
    """The largest K that ``INetworkDefinition.add_topk`` accepts, found by bisection.

    Neither TensorRT nor TensorRT-RTX exposes the limit as an attribute; the
    network API refuses a K above it at once (RTX 1.7.1: "Invalid TopK K: 3841.
    Valid range of TopK K is [0, 3841)"), which costs no engine build.  The
    probe's input has a *dynamic* reduced axis, so a TensorRT that also checks
    ``k <= d`` at layer creation has no small ``d`` to check against (a fixed
    axis of width 8 would make such a TensorRT report 8 and clamp every
    ``pre_topk`` to 8); a static 2**20-wide axis is the fallback when dynamic
    inputs are refused.  A result below ``TOPK_PROBE_FLOOR`` is not believed:
    the documented 3840 is used and the source says why.  Needs a ``Builder``;
    TensorRT 10's needs a GPU, so without one the documented value is returned.
    """
    from harness.trt.logger import capture_logger

    try:
        logger = capture_logger(module, "error")
        builder = module.Builder(logger)
        network = builder.create_network(strongly_typed_flags(module))
        axis = "dynamic"
        x = network.add_input("x", module.float32, (1, -1))
        if x is None:
            axis, x = "static 1048576", network.add_input("x_static", module.float32, (1, 1 << 20))
        op = module.TopKOperation.MAX

        def accepts(k: int) -> bool:
            return network.add_topk(x, op, k, 2) is not None

        if not accepts(1):
            raise RuntimeError("add_topk refused k=1")
        hi = 1 << 30
        if accepts(hi):
            return DOCUMENTED_TOPK_MAX, (f"probe: add_topk accepted k={hi} (the limit is checked "
                                         f"later); using the {DOCUMENTED_TOPK_SOURCE}")
        lo = 1  # accepted; hi refused
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if accepts(mid):
                lo = mid
            else:
                hi = mid
        if lo < TOPK_PROBE_FLOOR:
            return DOCUMENTED_TOPK_MAX, (f"probe on a {axis} axis gave k <= {lo}, below the sanity "
                                         f"floor {TOPK_PROBE_FLOOR} (not a TopK limit); using the "
                                         f"{DOCUMENTED_TOPK_SOURCE}")
        return lo, (f"probe: {module.__name__} INetworkDefinition.add_topk accepts k <= {lo} "
                    f"(on a {axis} axis)")
    except Exception as exc:
        return DOCUMENTED_TOPK_MAX, f"{DOCUMENTED_TOPK_SOURCE}; probe failed: {exc}"


def strongly_typed_flags(module) -> int:
    """``create_network`` flags for a strongly typed network (0 where the flag is gone)."""
    flag_enum = getattr(module, "NetworkDefinitionCreationFlag", None)
    flag = getattr(flag_enum, "STRONGLY_TYPED", None) if flag_enum is not None else None
    return 0 if flag is None else 1 << int(flag)
