"""The rotated family (RTMDet-R, issue #19): mmrotate compatibility, build, predict, train, export.

Oracles are independent of the code under test: shapely polygons for every rotated IoU, the
head's own ``predict_by_feat`` for the decode, and PyTorch for ONNX Runtime.  mmrotate and
e2cnn are installed by scripts/install.sh: without them these tests fail, they never skip.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT

torch = pytest.importorskip("torch", reason="the rotated family is torch code")
shapely_geometry = pytest.importorskip("shapely.geometry", reason="shapely is the IoU oracle")

IMGSZ = 128


def corners(box):
    """mmrotate's ``rbox2qbox`` corner order, written out independently (le90, radians)."""
    cx, cy, w, h, t = (float(v) for v in box)
    c, s = math.cos(t), math.sin(t)
    v1 = (w / 2 * c, w / 2 * s)
    v2 = (-h / 2 * s, h / 2 * c)
    return [(cx + v1[0] + v2[0], cy + v1[1] + v2[1]), (cx + v1[0] - v2[0], cy + v1[1] - v2[1]),
            (cx - v1[0] - v2[0], cy - v1[1] - v2[1]), (cx - v1[0] + v2[0], cy - v1[1] + v2[1])]


def shapely_iou(a, b, mode="iou"):
    pa, pb = shapely_geometry.Polygon(corners(a)), shapely_geometry.Polygon(corners(b))
    inter = pa.intersection(pb).area
    if mode == "iof":
        return inter / pa.area if pa.area > 0 else 0.0
    union = pa.area + pb.area - inter
    return inter / union if union > 0 else 0.0


def random_rboxes(n, seed, spread=40.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * spread
    wh = torch.rand(n, 2, generator=g) * 20 + 1
    angle = (torch.rand(n, 1, generator=g) - 0.5) * math.pi
    return torch.cat([xy, wh, angle], 1).double()


# --------------------------------------------------------------------------- compatibility layer

def test_mmrotate_imports_beside_the_pinned_stack():
    """In a fresh interpreter: mmrotate imports, mmyolo's rotated head sees it, and the two
    bridged things (mmdet.__version__, collections.Sequence) are as they were afterwards."""
    code = (
        "import collections, mmdet\n"
        "from harness.compat import mmrotate_compat\n"
        "before = mmdet.__version__\n"
        "assert mmrotate_compat.install()\n"
        "import mmrotate, mmrotate.models\n"
        "from mmyolo.models.dense_heads import rtmdet_rotated_head as h\n"
        "from mmyolo.models.task_modules.coders import distance_angle_point_coder as c\n"
        "assert h.MMROTATE_AVAILABLE and c.MMROTATE_AVAILABLE\n"
        "assert mmdet.__version__ == before == '3.3.0', mmdet.__version__\n"
        "assert not hasattr(collections, 'Sequence')\n"
        "import mmcv._ext as ext\n"
        "assert getattr(ext, 'DETBENCH_STANDIN', False)\n"
        "print(mmrotate.__version__)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "1.0.0rc1"


def _env():
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                       os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def mm():
    from harness.compat import mmrotate_compat

    assert mmrotate_compat.install(), "mmrotate is not installed: run scripts/install.sh"


@pytest.mark.parametrize("clockwise", [True, False])
def test_box_iou_rotated_through_mmcv_ops(mm, clockwise):
    from mmcv.ops import box_iou_rotated

    a, b = random_rboxes(12, 1), random_rboxes(9, 2)
    b[0] = a[0]  # identical
    b[1] = a[1] * torch.tensor([1, 1, 0.5, 0.5, 1], dtype=a.dtype)  # nested
    b[2] = a[2] + torch.tensor([0, 0, 0, 0, math.pi / 2], dtype=a.dtype)  # 90 degrees
    b[3, 2] = 0.0  # zero area
    flip = torch.tensor([1, 1, 1, 1, 1 if clockwise else -1], dtype=a.dtype)
    for mode in ("iou", "iof"):
        got = box_iou_rotated(a.float() * flip.float(), b.float() * flip.float(), mode=mode,
                              clockwise=clockwise)
        want = torch.tensor([[shapely_iou(x, y, mode) for y in b] for x in a], dtype=torch.float64)
        assert got.shape == (12, 9)
        assert torch.allclose(got.double(), want, atol=2e-5), (mode, (got.double() - want).abs().max())
        aligned = box_iou_rotated(a[:9].float() * flip.float(), b.float() * flip.float(),
                                  mode=mode, aligned=True, clockwise=clockwise)
        assert torch.allclose(aligned.double(), want[torch.arange(9), torch.arange(9)], atol=2e-5)


def test_nms_rotated_through_mmcv_ops(mm):
    """mmcv.ops.nms_rotated (what mmdet's batched_nms calls for 5-d boxes) against a greedy
    loop over shapely IoUs, with and without labels."""
    from mmcv.ops import nms_rotated

    boxes = random_rboxes(60, 3, spread=30).float()
    g = torch.Generator().manual_seed(4)
    scores = (torch.rand(60, generator=g) * 10).round() / 10  # ties
    labels = torch.randint(0, 3, (60,), generator=g)
    for lab in (None, labels):
        dets, keep = nms_rotated(boxes, scores, 0.3, labels=lab)
        order = sorted(range(60), key=lambda i: -float(scores[i]))
        kept = []
        for i in order:
            if all(not (shapely_iou(boxes[i], boxes[k]) > 0.3 and
                        (lab is None or int(lab[i]) == int(lab[k]))) for k in kept):
                kept.append(i)
        assert keep.tolist() == kept
        assert torch.equal(dets[:, :5], boxes[keep]) and torch.equal(dets[:, 5], scores[keep])


def test_differentiable_rotated_iou_matches_shapely(mm):
    """mmcv's diff_iou_rotated_2d (RotatedIoULoss) runs on the plain-torch vertex sort: IoU equal
    to shapely's on generic, nested and 90-degree pairs; gradients finite."""
    from mmcv.ops import diff_iou_rotated_2d

    a = random_rboxes(200, 5, spread=20)
    b = a + torch.randn(200, 5, generator=torch.Generator().manual_seed(6),
                        dtype=a.dtype) * torch.tensor([3, 3, 2, 2, 0.5], dtype=a.dtype)
    b[:, 2:4] = b[:, 2:4].abs() + 0.5
    b[:20] = a[:20] * torch.tensor([1, 1, 0.5, 0.5, 1], dtype=a.dtype)
    b[20:40] = a[20:40] + torch.tensor([0, 0, 0, 0, math.pi / 2], dtype=a.dtype)
    a = a.float().requires_grad_(True)
    iou = diff_iou_rotated_2d(a[None], b.float()[None])[0]
    want = torch.tensor([shapely_iou(x, y) for x, y in zip(a.detach(), b)], dtype=torch.float64)
    assert torch.allclose(iou.double(), want, atol=1e-4), (iou.double() - want).abs().max()
    iou.sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_vertex_sort_gives_the_hull_of_the_valid_vertices(mm):
    """The op's own contract, including mmcv's float32 corner cases (identical boxes, where
    its in-box test drops corners): the polygon the sorted indices describe has the area of
    the convex hull of the vertices marked valid."""
    from mmcv.ops import diff_iou_rotated as d

    a = random_rboxes(80, 7, spread=15).float()
    b = random_rboxes(80, 8, spread=15).float()
    b[:20] = a[:20]
    c1, c2 = d.box2corners(a[None]), d.box2corners(b[None])
    inter, valid = d.box_intersection(c1, c2)
    c12, c21 = d.box_in_box(c1, c2)
    vertices, mask = d.build_vertices(c1, c2, c12, c21, inter, valid)
    area, _ = d.calculate_area(d.sort_indices(vertices, mask), vertices)
    for i in range(80):
        pts = vertices[0, i][mask[0, i]].double().tolist()
        hull = shapely_geometry.MultiPoint(pts).convex_hull.area if len(pts) >= 3 else 0.0
        assert abs(float(area[0, i]) - hull) <= 1e-4 * max(1.0, hull), i


def test_missing_op_still_fails_loudly(mm):
    import mmcv._ext as ext

    with pytest.raises(NotImplementedError, match="convex_iou"):
        ext.convex_iou(None)
