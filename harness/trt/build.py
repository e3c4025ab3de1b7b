"""Build a serialized TensorRT engine from an ONNX file, for any flavour.

Typing policy (the same graph means the same engine on every flavour):

* TensorRT-RTX and TensorRT >= 11 are strongly typed only: precision comes from
  the graph (fp16 tensors from AutoCast, Q/DQ nodes for int8); no precision flags.
* TensorRT 10: a graph that carries its precision (fp16 tensors or Q/DQ nodes),
  or an fp32 request, is built strongly typed too; fp16/int8 of a plain fp32
  graph uses weak typing with ``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` (+ an
  INT8 calibrator, with a calibration profile fixed to the calibration shape).

Only the batch dimension of the input ``images`` may be dynamic; ``profile``
gives its (min, opt, max).  The builder's log is captured in full
(``BuildResult.log``) and every failure is a :class:`BuildError` naming the
stage and TensorRT's own error lines.  Building is a plain function: compose it
lazily (``functools.partial(build_engine, path, ...)``) and hand it to
:func:`harness.trt.cache.cached_engine`.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError

_DTYPE_NAMES = {"FLOAT": "fp32", "HALF": "fp16", "BF16": "bf16", "INT8": "int8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "fp8", "INT4": "int4",
                "FP4": "fp4"}


class BuildError(UserError):
    """A TensorRT build that failed: ``stage``, a one-line ``message`` and the full ``log``.

    Stages: import, check, builder, parse, profile, config, build, calibrate.  It is a
    UserError (one line in the CLI): the fix is in the graph, the settings or the
    installation, never in detbench's code; ``log`` keeps the details.
    """

    def __init__(self, stage: str, message: str, log: str = "", problems=()):
        self.stage, self.message, self.log = stage, message, log
        self.problems = list(problems)
        super().__init__(f"TensorRT {stage} failed: {message}")


@dataclass
class BuildResult:
    """What a build produced; ``engine_bytes`` is None only when it was not kept."""

    engine_bytes: bytes | None
    build_time_s: float
    log: str
    engine_size: int
    layer_precisions: dict[str, str] = field(default_factory=dict)  # declared output dtype per layer
    flavour: str = ""
    precision: str = ""
    typing: str = ""                     # 'strong' | 'weak'
    flags: tuple[str, ...] = ()
    profile: tuple[int, int, int] | None = None
    profile_shapes: dict = field(default_factory=dict)   # input -> (min, opt, max) as set
    timing_cache: str | None = None      # None | 'created' | 'loaded' | 'rejected'
    tf32: bool | None = None             # BuilderFlag.TF32 as built (None: the flavour has none)
    warnings: list[str] = field(default_factory=list)


def build_engine(onnx_path, *, flavour=None, precision: str = "fp32",
                 profile: tuple[int, int, int] | None = None, calibrator=None,
                 timing_cache_path=None, workspace_gb: float | None = None, plugins: bool = True,
                 input_name: str = "images", check: bool = True,
                 log_level: str = "info") -> BuildResult:
    """Parse ``onnx_path`` and build a serialized engine (see the module docstring).

    ``flavour`` defaults to ``detect()``.  ``check`` runs
    :func:`~harness.trt.capability.check_graph` first and raises a BuildError
    (stage 'check') listing its problems; ``check=False`` leaves everything to
    TensorRT.  ``plugins=False`` refuses graphs with plugin nodes.  The timing
    cache at ``timing_cache_path`` is loaded when present and written back
    (atomically) after a successful build.
    """
    from harness.trt.capability import PRECISIONS, check_graph, graph_features, load_model
    from harness.trt.flavour import detect, why_unavailable, strongly_typed_flags
    from harness.trt.logger import capture_logger

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    _check_profile(profile)
    onnx_path = Path(onnx_path)
    if flavour is None:
        flavour = detect()
        if flavour is None:
            raise BuildError("import", why_unavailable())
    trt = flavour.module
    logger = capture_logger(trt, log_level)
    notes: list[str] = []

    def fail(stage: str, message: str, problems=()):
        raise BuildError(stage, message, logger.text(), problems)

    model = load_model(onnx_path)  # graph only: external weights stay on disk
    feats = graph_features(model)
    if check:
        problems = check_graph(model, flavour, precision,
                               calibrator_available=calibrator is not None)
        if problems:
            for p in problems:
                logger.note(f"check: {p.code}: {p}")
            fail("check", "; ".join(str(p) for p in problems), problems)
    if not plugins and feats.plugin_ops:
        fail("check", "plugins=False but the graph has plugin nodes: "
             + ", ".join(f"{n} ({op})" for n, op, _ in feats.plugin_ops))

    # ---- typing and flags
    try:
        strong, flags, use_calibrator, typing_notes = plan_typing(flavour, feats, precision,
                                                                  calibrator)
    except BuildError as exc:
        fail(exc.stage, exc.message)
    notes.extend(typing_notes)
    calibrator = calibrator if use_calibrator else None
    logger.note(f"{flavour.label}: precision={precision} typing={'strong' if strong else 'weak'} "
                f"flags={flags or 'none'}")

    # ---- builder, network, parser
    try:
        builder = trt.Builder(logger)
    except Exception as exc:
        fail("builder", f"could not create a {flavour.label} Builder: {exc}")
    network = builder.create_network(strongly_typed_flags(trt) if strong else 0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))
    parse_errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    for err in parse_errors:
        logger.records.append((1, f"ONNX parser: {err}"))
    if not ok:
        first = parse_errors[0] if parse_errors else (logger.errors() or ["no detail"])[0]
        fail("parse", f"{flavour.label} could not parse {onnx_path.name}: {first}")

    # ---- config: profile, precision, workspace, timing cache
    config = builder.create_builder_config()
    profile_shapes = _add_profile(trt, builder, network, config, profile, input_name, fail)
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    tf32 = _tf32_policy(trt, config, precision, notes)
    if calibrator is not None:
        config.int8_calibrator = calibrator
        _set_calibration_profile(builder, config, calibrator, input_name, profile_shapes, notes)
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    tc_state = None
    if timing_cache_path is not None:
        tc_state = _load_timing_cache(config, Path(timing_cache_path), flavour, notes)

    layer_precisions = _layer_precisions(network)

    # ---- build
    mark = logger.mark()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        serialized = builder.build_serialized_network(network, config)
    build_time = time.perf_counter() - t0
    if calibrator is not None and getattr(calibrator, "error", None) is not None:
        fail("calibrate", f"the calibrator failed: {calibrator.error}")
    if serialized is None:
        errors = logger.errors_since(mark) or ["no error message from TensorRT"]
        # a GPU-less RTX build also logs CUDA-driver errors: name the real cause first
        errors.sort(key=lambda e: "CUDA driver version is insufficient" in e)
        fail("build", " | ".join(_short(e) for e in errors[:3]))
    engine_bytes = bytes(memoryview(serialized))
    if tc_state is not None:
        _save_timing_cache(config, Path(timing_cache_path))
    for n in notes:
        logger.note(n)
    logger.note(f"built {len(engine_bytes)} bytes in {build_time:.2f}s")
    return BuildResult(engine_bytes=engine_bytes, build_time_s=build_time, log=logger.text(),
                       engine_size=len(engine_bytes), layer_precisions=layer_precisions,
                       flavour=flavour.label, precision=precision,
                       typing="strong" if strong else "weak", flags=flags,
                       profile=tuple(profile) if profile else None, profile_shapes=profile_shapes,
                       timing_cache=tc_state, tf32=tf32, warnings=notes)


# --------------------------------------------------------------------------- helpers

def plan_typing(flavour, feats, precision: str, calibrator=None):
    """(strongly_typed, builder flag names, use the calibrator?, notes) for one build.

    Strong typing wherever the flavour has nothing else, the graph carries its
    precision (fp16 tensors, Q/DQ nodes) or fp32 is asked for; TensorRT 10 weak
    typing (FP16 / INT8 flag) only for fp16/int8 of a plain fp32 graph.
    """
    carries_precision = feats.fp16_tensors or feats.qdq_nodes > 0
    strong = flavour.strongly_typed_only or carries_precision or precision == "fp32"
    flags: list[str] = []
    notes: list[str] = []
    if not strong:
        flags.append("FP16" if precision == "fp16" else "INT8")
        if precision == "int8" and calibrator is None:
            raise BuildError("config", f"int8 of a graph without Q/DQ nodes on {flavour.label} "
                                       f"needs a calibrator (make_calibrator) or a Q/DQ ONNX")
    use_calibrator = calibrator is not None and not strong and precision == "int8"
    if calibrator is not None and not use_calibrator:
        if not flavour.has_calibrators:
            raise BuildError("config", f"{flavour.label} has no INT8 calibrators (strongly typed "
                                       f"only); int8 comes from a Q/DQ ONNX")
        notes.append("calibrator ignored: the build takes its precision from the graph")
    return strong, tuple(flags), use_calibrator, notes


def _tf32_policy(trt, config, precision: str, notes: list) -> bool | None:
    """fp32 means fp32: clear ``BuilderFlag.TF32``, which TensorRT enables by default
    (NvInfer.h, BuilderFlag::kTF32: "Enabled by default"; TF32 rounds matmul/conv inputs to
    10-bit mantissas).  fp16/int8 builds keep it for their fp32 layers; recorded either way."""
    flag = getattr(getattr(trt, "BuilderFlag", None), "TF32", None)
    if flag is None or not hasattr(config, "get_flag"):
        return None
    if precision == "fp32" and config.get_flag(flag):
        config.clear_flag(flag)
        notes.append("TF32 cleared: an fp32 engine computes in fp32 (TensorRT enables TF32 by default)")
    return bool(config.get_flag(flag))


def _check_profile(profile) -> None:
    if profile is None:
        return
    if len(profile) != 3 or not all(isinstance(v, int) and v >= 1 for v in profile) \
            or not profile[0] <= profile[1] <= profile[2]:
        raise UserError(f"profile must be three batch sizes min <= opt <= max, all >= 1; "
                        f"got {tuple(profile)}")


def _add_profile(trt, builder, network, config, profile, input_name, fail) -> dict:
    """One optimization profile over the batch dimension of ``input_name``."""
    inputs = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        inputs[t.name] = tuple(t.shape)
    if input_name not in inputs:
        fail("profile", f"the graph has no input '{input_name}' (inputs: {', '.join(inputs)})")
    for name, shape in inputs.items():
        if name != input_name and -1 in shape:
            fail("profile", f"input '{name}' has dynamic dimensions {shape}; only "
                            f"'{input_name}' may have a dynamic batch")
    shape = inputs[input_name]
    if -1 in shape[1:]:
        fail("profile", f"input '{input_name}' has shape {shape}: only the batch may be dynamic; "
                        f"export with a fixed image size")
    if shape[0] != -1:
        static = shape[0]
        if profile is not None and tuple(profile) != (static,) * 3:
            fail("profile", f"input '{input_name}' has a static batch of {static}, so profile "
                            f"{tuple(profile)} cannot be honoured; export with a dynamic batch")
        return {}
    if profile is None:
        fail("profile", f"input '{input_name}' has a dynamic batch {shape}: pass "
                        f"profile=(min, opt, max) batch sizes")
    rest = shape[1:]
    p = builder.create_optimization_profile()
    p.set_shape(input_name, (profile[0], *rest), (profile[1], *rest), (profile[2], *rest))
    if config.add_optimization_profile(p) < 0:
        fail("profile", f"TensorRT rejected the profile {tuple(profile)} for '{input_name}'")
    got = tuple(tuple(s) for s in p.get_shape(input_name))
    return {input_name: got}


def _set_calibration_profile(builder, config, calibrator, input_name, profile_shapes, notes):
    """Calibration runs at one shape: without its own profile TensorRT uses kOPT of profile 0."""
    shape = getattr(calibrator, "batch_shape", None)
    if not profile_shapes or shape is None or not hasattr(config, "set_calibration_profile"):
        return
    p = builder.create_optimization_profile()
    p.set_shape(input_name, tuple(shape), tuple(shape), tuple(shape))
    config.set_calibration_profile(p)
    notes.append(f"calibration profile {tuple(shape)}")


def _load_timing_cache(config, path: Path, flavour, notes) -> str:
    data = path.read_bytes() if path.is_file() else b""
    if flavour.name == "tensorrt_rtx":
        notes.append("timing cache: a no-op on TensorRT-RTX (deprecated since RTX 1.2); "
                     "kept for the same code path as TensorRT")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = config.create_timing_cache(data)
        if config.set_timing_cache(cache, False):
            return "loaded" if data else "created"
        notes.append(f"timing cache {path} does not match this TensorRT/GPU: started a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
        return "rejected"


def _save_timing_cache(config, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = config.get_timing_cache()
        if cache is None:
            return
        data = bytes(memoryview(cache.serialize()))
    atomic_write(path, data)


def _layer_precisions(network) -> dict[str, str]:
    """Declared output type of each network layer (before fusion; not the chosen kernels)."""
    out = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.num_outputs:
            dtype = str(layer.get_output(0).dtype).rsplit(".", 1)[-1]
            out[layer.name] = _DTYPE_NAMES.get(dtype, dtype.lower())
    return out


def _short(message: str, limit: int = 300) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit] + "..."


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (the package-wide helper)."""
    from harness.fileio import atomic_write as write

    write(path, data)
