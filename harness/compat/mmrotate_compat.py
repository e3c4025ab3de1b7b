"""Import mmrotate 1.0.0rc1 beside detbench's mm stack (mmdet 3.3.0, mmcv-lite 2.0.1).

mmyolo's RTMDet-R (``RTMDetRotatedHead``, ``DistanceAnglePointCoder``) needs
mmrotate's ``RotatedBoxes``, ``distance2obb``, ``PseudoAngleCoder``,
``RotatedIoULoss`` and ``RBboxOverlaps2D``.  The only mmrotate with the mmengine
API (1.0.0rc1, a pure-Python wheel installed with ``--no-deps``) refuses to
import beside mmdet 3.3.0 and does not import on Python >= 3.10.  Two things, and
only these two, are bridged here, for the exact versions that detbench tests
(:data:`TESTED`); any other combination meets mmrotate's own checks:

1. ``mmrotate/__init__.py`` asserts ``mmdet <= 3.1.0``.  While that file runs,
   ``mmdet.__version__`` reads as mmrotate's maximum ("3.1.0"), then is put back.
   The mmdet API mmrotate's rotated-detection path uses (bbox structures, the
   registries, losses, assigners, coders) is unchanged between 3.1 and 3.3; the
   tests in tests/test_rotated_model.py build, predict and train RTMDet-R with it.
2. ``mmrotate/models/detectors/refine_single_stage.py`` does
   ``from collections import Sequence`` (removed in Python 3.10).  While
   ``mmrotate.models`` imports, ``collections.Sequence`` is
   ``collections.abc.Sequence``; the alias is removed afterwards.

mmrotate's compiled ops come from ``mmcv._ext``, which on mmcv-lite is
:mod:`harness.compat.mmcv_ext`: ``nms_rotated`` and ``box_iou_rotated`` there
are backed by :mod:`harness.geometry.rotated` (exact polygon IoU), and
``diff_iou_rotated_sort_vertices_forward`` (the one compiled step of mmcv's
differentiable rotated IoU, hence of ``RotatedIoULoss``) is plain torch.

mmyolo imports mmrotate inside ``try: ... except ImportError`` at
``import mmyolo.models`` time, so :func:`install` must run before that import
(``harness.models.mmyolo_build.prepare_mm`` does it first).  Without mmrotate
installed, :func:`install` does nothing and the rotated family is refused at
plan time (:func:`require`).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import sys

from harness.errors import UserError

#: the versions the bridge is for (mmcv-lite 2.0.1 passes mmrotate's own mmcv check);
#: with any other mmrotate or mmdet, mmrotate's own checks decide
TESTED = {"mmrotate": "1.0.0rc1", "mmdet": "3.3.0"}
#: what mmrotate 1.0.0rc1 accepts as the newest mmdet
MMROTATE_MMDET_MAX = "3.1.0"
INSTALL_HINT = ("pip install --no-deps mmrotate==1.0.0rc1 e2cnn==0.2.3 (scripts/install.sh does it; "
                "pyproject extra `rotated`)")


def available() -> bool:
    """mmrotate is installed (no import, so planning stays cheap)."""
    try:
        return importlib.util.find_spec("mmrotate") is not None
    except (ImportError, ValueError):
        return False


def require(what: str) -> None:
    """Plan-time check: UserError naming ``what`` unless mmrotate and e2cnn are installed."""
    missing = [name for name in ("mmrotate", "e2cnn") if not _find(name)]
    if missing:
        raise UserError(f"{what} is a rotated (RTMDet-R) model and needs {' and '.join(missing)}, "
                        f"which is not installed: {INSTALL_HINT}")


def _find(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def install() -> bool:
    """Import mmrotate (and its models' registry) so mmyolo's rotated head finds it.

    Returns whether mmrotate is importable now.  Idempotent.  The real
    ``mmcv._ext`` is kept when one is installed (full mmcv): then only the
    version bridge applies.
    """
    from harness.compat import mmcv_ext

    mmcv_ext.install()
    if "mmrotate.models" in sys.modules:
        return True
    if not available():
        return False
    import mmdet

    ours = importlib.metadata.version("mmrotate") == TESTED["mmrotate"]
    bridge_mmdet = ours and mmdet.__version__ == TESTED["mmdet"]
    with _mmdet_version_reads(MMROTATE_MMDET_MAX if bridge_mmdet else None):
        importlib.import_module("mmrotate")
    with _collections_sequence(ours):
        importlib.import_module("mmrotate.models")
    return True


@contextlib.contextmanager
def _mmdet_version_reads(version: str | None):
    """``mmdet.__version__`` reads as ``version`` inside the block (None: unchanged)."""
    import mmdet

    if version is None:
        yield
        return
    real = mmdet.__version__
    mmdet.__version__ = version
    try:
        yield
    finally:
        mmdet.__version__ = real


@contextlib.contextmanager
def _collections_sequence(active: bool):
    import collections
    import collections.abc

    if not active or hasattr(collections, "Sequence"):
        yield
        return
    collections.Sequence = collections.abc.Sequence
    try:
        yield
    finally:
        del collections.Sequence
