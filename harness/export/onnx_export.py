"""Serialise a :class:`DeployModel` to ONNX, validated, simplified and cached.

The legacy TorchScript exporter (``dynamo=False``) is used on purpose: the
custom NMS nodes are emitted through ``autograd.Function.symbolic``, which only
that exporter honours.  Every file is written to a temporary name and renamed,
so a crash never leaves a half-written model where a later run would trust it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from harness.errors import UserError

EXPORT_FORMAT_VERSION = 1  # bump when the meaning of an exported graph changes
MIN_OPSET = 11
_CODE_FILES = ("deploy.py", "onnx_export.py")


def export_onnx(model, cfg, out_path, *, imgsz, nms: str = "none", opset: int = 17,
                dynamic_batch: bool = True, simplify: bool = True, pre_topk: int | None = None,
                keep_topk: int | None = None, iou_thr: float | None = None,
                score_thr: float | None = None, batch: int | None = None) -> dict:
    """Export ``model`` (an mmyolo detector in eval mode) and return what was made.

    NMS settings left as None come from the config's ``test_cfg`` so that an
    exported NMS behaves like mmyolo's by default (``pre_topk`` <- ``nms_pre``,
    ``keep_topk`` <- ``max_per_img``).  Only the batch dimension is dynamic:
    the prior tables are baked in for ``imgsz``.  ``batch`` is the traced batch
    size, i.e. the fixed one when ``dynamic_batch`` is off (default 1); a dynamic
    export traces with 2 so that no size-1 dimension gets specialised away.
    """
    import onnx
    import torch

    from harness.export.deploy import OUTPUT_NAMES, TRT_PLUGIN_DOMAIN, DeployModel

    if opset < MIN_OPSET:
        raise UserError(f"ONNX opset {opset} is too old: detbench exports need opset >= {MIN_OPSET} "
                        "(NonMaxSuppression, TopK with a tensor k)")
    settings = _nms_settings(cfg, pre_topk, keep_topk, iou_thr, score_thr)
    deploy = DeployModel(model, nms=nms, **settings).eval()
    height, width = _hw(imgsz)
    param = next(model.parameters())
    batch = batch or (2 if dynamic_batch else 1)
    dummy = torch.zeros((batch, 3, height, width), dtype=param.dtype, device=param.device)
    names = OUTPUT_NAMES[nms]
    dynamic = {n: {0: "batch"} for n in ("images", *names)} if dynamic_batch else None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # Fixed spatial sizes are intended, and the legacy exporter is chosen on purpose.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            torch.onnx.export(deploy, (dummy,), str(raw_path), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=list(names),
                              dynamic_axes=dynamic, do_constant_folding=True,
                              custom_opsets=_custom_opsets(nms, TRT_PLUGIN_DOMAIN))
        proto = onnx.load(str(raw_path))
        onnx.checker.check_model(proto)
        proto, simplifier, skipped = _maybe_simplify(proto, simplify)
        _stamp(proto, nms, settings, height, width)
        _atomic_write(out_path, proto.SerializeToString())
    return {
        "path": str(out_path), "nms": nms, "imgsz": [height, width], "opset": opset,
        **settings, "dynamic_batch": dynamic_batch,
        "inputs": _io(proto.graph.input), "outputs": _io(proto.graph.output),
        "simplifier": simplifier, "simplify_skipped": skipped,
        "exporter": {"tool": "torch.onnx.export(dynamo=False)", "torch": torch.__version__},
        "sha256": file_sha256(out_path),
    }


def _custom_opsets(nms: str, domain: str) -> dict:
    return {domain: 1} if nms in ("efficient_nms", "batched_nms") else {}


def _nms_settings(cfg, pre_topk, keep_topk, iou_thr, score_thr) -> dict:
    test_cfg = dict(cfg.model.get("test_cfg") or {})
    nms_cfg = dict(test_cfg.get("nms") or {})
    return {
        "pre_topk": int(pre_topk if pre_topk is not None else test_cfg.get("nms_pre", 1000)),
        "keep_topk": int(keep_topk if keep_topk is not None else test_cfg.get("max_per_img", 100)),
        "iou_thr": float(iou_thr if iou_thr is not None else nms_cfg.get("iou_threshold", 0.65)),
        "score_thr": float(score_thr if score_thr is not None else test_cfg.get("score_thr", 0.001)),
    }


def _hw(imgsz) -> tuple[int, int]:
    if isinstance(imgsz, int):
        return imgsz, imgsz
    height, width = imgsz
    return int(height), int(width)


def _maybe_simplify(proto, simplify: bool):
    """onnxslim when installed; the unsimplified graph whenever slimming fails or breaks it.

    The plugin graphs are the fragile case: a simplifier cannot infer shapes
    through ops it does not know, so its result is only kept if it still holds
    every non-standard node and passes the checker.  Returns the graph, the
    simplifier used (None if none) and why slimming was dropped (None if not).
    """
    if not simplify:
        return proto, None, None
    try:
        import onnxslim
    except ImportError:
        return proto, None, "onnxslim is not installed"
    import onnx

    custom = sorted(n.op_type for n in proto.graph.node if n.domain not in ("", "ai.onnx"))
    try:
        slim = onnxslim.slim(proto)
        onnx.checker.check_model(slim)
    except Exception as exc:  # onnxslim raises many types; keep the sound graph
        return proto, None, f"onnxslim {onnxslim.__version__}: {type(exc).__name__}: {exc}"[:300]
    kept = sorted(n.op_type for n in slim.graph.node if n.domain not in ("", "ai.onnx"))
    if kept != custom:
        return proto, None, f"onnxslim {onnxslim.__version__} altered the plugin nodes"
    return slim, {"tool": "onnxslim", "version": onnxslim.__version__}, None


def _stamp(proto, nms: str, settings: dict, height: int, width: int) -> None:
    """Record the export settings inside the file, for whoever loads it later."""
    meta = {"detbench.nms": nms, "detbench.imgsz": f"{height},{width}",
            **{f"detbench.{k}": str(v) for k, v in settings.items()}}
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _io(values) -> list[dict]:
    def dim(d):
        return d.dim_param if d.dim_param else d.dim_value
    return [{"name": v.name, "shape": [dim(d) for d in v.type.tensor_type.shape.dim]}
            for v in values]


# --------------------------------------------------------------------------- cache

def export_cached(cache_dir, model_key: dict, build_fn: Callable[[Path], dict | None]) -> Path:
    """Return the cached export for ``model_key``, building it with ``build_fn`` if absent.

    ``model_key`` should hold everything that determines the graph (see
    :func:`export_key`); the export code version and tool versions are added
    here, so editing the exporter invalidates old entries by itself.
    ``build_fn(path)`` writes the ONNX file at ``path`` and may return metadata,
    kept beside it as ``<digest>.json``.
    """
    from harness import cache

    key = {**model_key, "export_code": export_code_version(), "tools": _tool_versions()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    target = Path(cache_dir) / f"{digest}.onnx"

    def build(staged: Path) -> None:
        meta = build_fn(staged)
        if meta is not None:
            meta = {**meta, "path": str(target), "key": key}
            _atomic_write(target.with_suffix(".json"),
                          json.dumps(meta, indent=2, sort_keys=True, default=str).encode())

    return cache.cached(target, build)


def export_key(config_path, checkpoint: str, **options) -> dict:
    """The cache key of one export: config and weights by content, plus every option."""
    return {"config": config_sha256(config_path),
            "checkpoint": "random" if checkpoint == "random" else file_sha256(checkpoint),
            "options": options}


def config_sha256(config_path) -> str:
    """Hash of the config file *and* its resolved model section.

    mmyolo configs inherit from ``_base_`` files, so the file bytes alone would
    miss an edit to a base config.
    """
    from mmengine.config import Config

    path = Path(config_path)
    if not path.is_file():
        raise UserError(f"model config '{path}' does not exist")
    model = Config.fromfile(str(path)).to_dict().get("model", {})
    h = hashlib.sha256(path.read_bytes())
    h.update(json.dumps(model, sort_keys=True, default=str).encode())
    return h.hexdigest()


def export_code_version() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256(str(EXPORT_FORMAT_VERSION).encode())
    for name in _CODE_FILES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _tool_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "onnx", "onnxslim", "mmyolo"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def file_sha256(path) -> str:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file '{path}' does not exist")
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
