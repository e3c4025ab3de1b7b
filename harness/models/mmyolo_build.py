"""Build an mmyolo detector from its config, as mmyolo itself would for testing.

Every model, the shipped fixture included, goes through this one path:
config file → (image-size override) → ``MODELS.build`` → checkpoint or seeded
random weights → eval mode on the requested device.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from harness.errors import UserError

_SIZE_KEYS = ("scale", "img_scale")


def prepare_mm() -> None:
    """Make mmcv-lite usable (plain-torch ``mmcv._ext``), import mmrotate where it is installed
    (before mmyolo's models, which look for it once), and register mmyolo's modules."""
    from harness.compat import mmrotate_compat

    mmrotate_compat.install()  # installs harness.compat.mmcv_ext first
    from mmyolo.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights logs every tensor


def load_config(path: str | Path, imgsz: int | None = None):
    """Read an mmyolo config; ``imgsz`` rewrites the test pipeline's target size.

    The test pipeline is the one the config itself defines (keep-ratio resize +
    letterbox for the YOLO families, resize + pad for YOLOX, fixed-shape resize
    for PPYOLOE), so the reference sees exactly what mmyolo would.  Dataset-level
    ``batch_shapes_cfg`` is disabled: detbench feeds fixed-size batches.
    """
    path = Path(path)
    cfg = read_config(path)
    pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
    if imgsz is not None:
        pipeline = [_resize_step(step, imgsz) for step in pipeline]
    cfg.detbench_test_pipeline = pipeline
    backbone = cfg.model.get("backbone", {})
    if backbone.get("init_cfg") is not None:
        backbone["init_cfg"] = None  # rtmdet points at a download URL
    return cfg


#: what detbench reads from a config: without these it is not an mmyolo detector config
_REQUIRED = (("model", "type"), ("model", "bbox_head"), ("model", "test_cfg"),
             ("test_dataloader", "dataset", "pipeline"))
_CONFIG_SUFFIXES = (".py", ".json", ".yaml", ".yml")


def check_config(path: str | Path) -> None:
    """Plan-time check of a model config: UserError unless it exists and reads as an mmyolo
    detector config.  Parsed with mmengine where it is installed (no torch import); without
    mmengine only existence and syntax are checked, so planning works on a bare machine."""
    import importlib

    path = Path(path)
    try:
        importlib.import_module("mmengine.config")
    except ImportError:
        _check_syntax(_existing(path))
        return
    read_config(path)


#: configs already read in this process, by (path, mtime, size): a run's zygote reads its
#: cells' configs once and every forked cell gets a copy (a changed file is read again)
_READ: dict = {}


def read_config(path: str | Path):
    """An mmengine Config of an mmyolo detector, or a UserError naming the file and the problem."""
    path = _existing(Path(path))
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _READ:
        _READ[key] = _parse_config(path)
    return copy.deepcopy(_READ[key])  # callers change their config (image size, init_cfg)


def _parse_config(path: Path):
    import warnings

    from mmengine.config import Config

    try:
        with warnings.catch_warnings():  # mmengine warns about pkg_resources on every read
            warnings.simplefilter("ignore")
            cfg = Config.fromfile(str(path))
    except Exception as exc:  # mmengine raises many types for a broken config
        raise UserError(f"model config '{path}' could not be read: {_reason(exc)}; fix the file "
                        "or give another config") from None
    for keys in _REQUIRED:
        node = cfg
        for key in keys:
            node = node.get(key) if hasattr(node, "get") else None
        if node is None:
            raise UserError(f"model config '{path}' is not an mmyolo detector config: it has no "
                            f"`{'.'.join(keys)}`; give an mmyolo config (e.g. a name from "
                            "`detbench models`)")
    return cfg


def _existing(path: Path) -> Path:
    if path.is_dir():
        raise UserError(f"model config '{path}' is a directory: give the path of a config file")
    if not path.is_file():
        hint = (": mmyolo is not installed (pip install -e '.[mmyolo]')"
                if str(path).startswith("mmyolo::") else "")
        raise UserError(f"model config '{path}' does not exist{hint}: give an mmyolo config path "
                        "or one of the names in `detbench models`")
    return path


def _check_syntax(path: Path) -> None:
    """Without mmengine: the file must at least parse in its format."""
    import ast
    import json

    import yaml

    if path.suffix not in _CONFIG_SUFFIXES:
        raise UserError(f"model config '{path}': a config is a {', '.join(_CONFIG_SUFFIXES)} file")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            ast.parse(text, filename=str(path))
        elif path.suffix == ".json":
            json.loads(text)
        else:
            yaml.safe_load(text)
    except (SyntaxError, ValueError, yaml.YAMLError, OSError) as exc:
        raise UserError(f"model config '{path}' could not be read: {_reason(exc)}; fix the file "
                        "or give another config") from None


def _reason(exc: BaseException) -> str:
    """The real reason in one line, never an empty string."""
    if isinstance(exc, SyntaxError):
        return f"invalid syntax at line {exc.lineno}: {exc.msg}"
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _resize_step(step: dict, imgsz: int) -> dict:
    step = dict(step)
    for key in _SIZE_KEYS:
        if key in step:
            step[key] = (imgsz, imgsz)
    if "size" in step and step.get("size") is not None:
        step["size"] = (imgsz, imgsz)
    if "width" in step and "height" in step:
        step["width"] = step["height"] = imgsz
    return step


def build_model(cfg, checkpoint: str, *, device: str = "cpu", trust_checkpoint: bool = False,
                seed: int = 0):
    """Build the detector in eval mode; ``checkpoint='random'`` keeps seeded init weights."""
    import torch
    from mmengine.model import revert_sync_batchnorm
    from mmyolo.registry import MODELS as MM_MODELS

    prepare_mm()
    torch.manual_seed(seed)
    model = MM_MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    model = revert_sync_batchnorm(model)
    if checkpoint != "random":
        load_weights(model, checkpoint, trust_checkpoint=trust_checkpoint)
    return model.to(device).eval()


def load_weights(model, checkpoint: str | Path, *, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` unless the user trusts it.

    torch >= 2.6 defaults to ``weights_only=True``, which refuses mmengine's full
    training checkpoints (they pickle message hubs and history buffers).  detbench
    never unpickles arbitrary objects silently: such a checkpoint needs
    ``trust_checkpoint: true`` in the matrix, or stripping to ``state_dict``.
    """
    from harness.models import checkpoint as ckpt_file

    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist: give a path to a .pth file or "
                        "`checkpoint: random`")
    ckpt = ckpt_file.load(path, trust_checkpoint=trust_checkpoint)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise UserError(f"checkpoint '{path}' holds a {type(state).__name__}, not a state_dict: "
                        "save `model.state_dict()` (or mmengine's {'state_dict': ...})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ckpt_file.check_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    return ckpt.get("meta", {}) if isinstance(ckpt, dict) else {}
