"""Which kind of boxes a model predicts: axis-aligned (``horizontal``) or ``rotated``.

A model is rotated when its mmyolo config's head is a rotated head (``RTMDetRotatedHead``,
what mmyolo's ``configs/rtmdet/rotated`` use) or its ``test_cfg`` NMS is ``nms_rotated``.
The answer decides, at plan time, which datasets it may be evaluated on (a rotated model
needs rotated ground truth and the reverse: ``harness.matrix.check_box_types``) and, in the
cell, which metrics it gets (rotated IoU AP instead of COCO bbox AP).

Reads the config with mmengine where it is installed (no torch import); without mmengine the
config's text is searched for a rotated head name (configs then cannot be resolved through
their ``_base_`` chain, so this is the best a bare planning machine can do).
"""
from __future__ import annotations

from pathlib import Path

HORIZONTAL, ROTATED = "horizontal", "rotated"
BOX_TYPES = (HORIZONTAL, ROTATED)
#: heads whose predictions are rotated boxes (mmyolo 0.6.0 ships one)
ROTATED_HEADS = frozenset({"RTMDetRotatedHead"})
ROTATED_NMS = frozenset({"nms_rotated"})


def config_box_type(cfg) -> tuple[str, str]:
    """``(box type, why)`` of an mmengine Config of an mmyolo detector."""
    model = cfg.get("model") or {}
    head = (model.get("bbox_head") or {}).get("type")
    if _rotated_head(head):
        return ROTATED, f"head {head}"
    nms = ((model.get("test_cfg") or {}).get("nms") or {}).get("type")
    if nms in ROTATED_NMS:
        return ROTATED, f"test_cfg.nms {nms}"
    return HORIZONTAL, f"head {head}" if head else "no rotated head"


def _rotated_head(head) -> bool:
    name = str(head or "").split(".")[-1]  # a scope prefix (mmyolo.RTMDetRotatedHead) is the same head
    return name in ROTATED_HEADS


def config_file_box_type(path: str | Path) -> tuple[str, str]:
    """``(box type, why)`` of a config file (see the module doc for the mmengine-less case)."""
    import importlib

    try:
        importlib.import_module("mmengine.config")
    except ImportError:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        head = next((h for h in sorted(ROTATED_HEADS) if h in text), None)
        return (ROTATED, f"head {head}") if head else (HORIZONTAL, "no rotated head in its text")
    from harness.models.mmyolo_build import read_config

    return config_box_type(read_config(path))


def of_cell(cell) -> str:
    """What a stored cell's boxes (and so its AP) are: the measured ``metrics.box_type``, else the
    plan's ``params.box_type``, else horizontal (cells stored before #19).  ``cell``: a
    ``CellRecord`` or a row dict with ``metrics`` / ``params``."""
    get = cell.get if isinstance(cell, dict) else (lambda k: getattr(cell, k, None))
    return ((get("metrics") or {}).get("box_type") or (get("params") or {}).get("box_type")
            or HORIZONTAL)
