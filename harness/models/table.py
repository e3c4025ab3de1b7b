"""The explicit table of mmyolo models detbench knows by name.

A matrix may name one of these (``yolov8_n``) or give any mmyolo config path.
Config paths are relative to mmyolo's packaged configs (``mmyolo/.mim/configs``),
resolved without importing mmyolo so that planning stays cheap.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

MODELS: dict[str, str] = {
    "yolov5_s": "yolov5/yolov5_s-v61_syncbn_fast_8xb16-300e_coco.py",
    "yolov6_n": "yolov6/yolov6_n_syncbn_fast_8xb32-400e_coco.py",
    "yolov7_tiny": "yolov7/yolov7_tiny_syncbn_fast_8x16b-300e_coco.py",
    "yolov8_n": "yolov8/yolov8_n_syncbn_fast_8xb16-500e_coco.py",
    "yolox_tiny": "yolox/yolox_tiny_fast_8xb8-300e_coco.py",
    "ppyoloe_plus_s": "ppyoloe/ppyoloe_plus_s_fast_8xb8-80e_coco.py",
    "rtmdet_tiny": "rtmdet/rtmdet_tiny_syncbn_fast_8xb32-300e_coco.py",
}

#: The rotated family (issue #19): RTMDet-R, (cx, cy, w, h, angle) boxes.  Kept apart from
#: ``MODELS`` (the axis-aligned families) because a rotated model needs a rotated dataset and
#: mmrotate (harness.compat.mmrotate_compat), and its graphs end at the decode (nms: none).
ROTATED_MODELS: dict[str, str] = {
    "rtmdet_r_tiny": "rtmdet/rotated/rtmdet-r_tiny_fast_1xb8-36e_dota.py",
    "rtmdet_r_s": "rtmdet/rotated/rtmdet-r_s_fast_1xb8-36e_dota.py",
    "rtmdet_r_m": "rtmdet/rotated/rtmdet-r_m_syncbn_fast_2xb4-36e_dota.py",
    "rtmdet_r_l": "rtmdet/rotated/rtmdet-r_l_syncbn_fast_2xb4-36e_dota.py",
}

#: every name a matrix may give without ``config:``
KNOWN_MODELS: dict[str, str] = {**MODELS, **ROTATED_MODELS}


#: how `detbench models` (and mmengine's `_base_`) names a config inside the mmyolo package
PACKAGE_PREFIX = "mmyolo::"


def packaged_config_root() -> Path | None:
    try:
        spec = importlib.util.find_spec("mmyolo")
    except (ImportError, ValueError):  # a broken or blocked install counts as absent
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / ".mim" / "configs"


def packaged_config(name: str) -> Path | None:
    """Path of the packaged config for a table name, or None when mmyolo is absent."""
    root = packaged_config_root()
    return None if root is None else root / KNOWN_MODELS[name]


def resolve_config(ref: str | None, base: Path) -> str | None:
    """The file a matrix's ``config:`` names: ``mmyolo::dir/file.py`` (as `detbench models`
    prints) inside the installed mmyolo, an absolute path, or a path relative to ``base``
    (the matrix's folder).  ``mmyolo::`` is kept as written when mmyolo is not installed,
    so the check that follows can say so.
    """
    if ref is None or Path(ref).is_absolute():
        return ref
    if ref.startswith(PACKAGE_PREFIX):
        root = packaged_config_root()
        return ref if root is None else str(root / ref.removeprefix(PACKAGE_PREFIX))
    return str((base / ref).resolve())
