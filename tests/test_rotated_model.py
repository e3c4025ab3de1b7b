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


# --------------------------------------------------------------------------- build, predict, train

ROTATED_CONFIGS = {
    "tiny": "rtmdet/rotated/rtmdet-r_tiny_fast_1xb8-36e_dota.py",
    "s": "rtmdet/rotated/rtmdet-r_s_fast_1xb8-36e_dota.py",
    "m": "rtmdet/rotated/rtmdet-r_m_syncbn_fast_2xb4-36e_dota.py",
    "l": "rtmdet/rotated/rtmdet-r_l_syncbn_fast_2xb4-36e_dota.py",
}


def load(name, imgsz=IMGSZ):
    from harness.models.mmyolo_build import load_config
    from harness.models.table import packaged_config_root

    return load_config(packaged_config_root() / ROTATED_CONFIGS[name], imgsz=imgsz)


@pytest.fixture(scope="module")
def tiny(mm):
    from harness.models.mmyolo_build import build_model

    cfg = load("tiny")
    return cfg, build_model(cfg, "random", seed=0)


def _predict(model, batch, score_thr=0.0, nms_pre=40):
    """mmdet's own predict path (data samples with metas -> head.predict -> predict_by_feat)."""
    from mmdet.structures import DetDataSample

    cfg = model.bbox_head.test_cfg
    old = dict(cfg)
    cfg.update(score_thr=score_thr, nms_pre=nms_pre, max_per_img=30)
    samples = [DetDataSample(metainfo=dict(img_shape=(IMGSZ, IMGSZ), ori_shape=(IMGSZ, IMGSZ),
                                           scale_factor=(1.0, 1.0), pad_param=[0, 0, 0, 0],
                                           batch_input_shape=(IMGSZ, IMGSZ)))
               for _ in range(len(batch))]
    try:
        with torch.no_grad():
            return model.predict(batch, samples)
    finally:
        cfg.clear()
        cfg.update(old)


def _box_tensor(boxes):
    """RotatedBoxes before mmdet's post-processing, a plain [K, 5] tensor after it."""
    return getattr(boxes, "tensor", boxes)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["s", "m", "l"])
def test_larger_configs_build_and_predict(mm, name):
    from harness.models.mmyolo_build import build_model

    model = build_model(load(name), "random", seed=0)
    out = _predict(model, torch.randn(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0)),
                   nms_pre=5)
    boxes = _box_tensor(out[0].pred_instances.bboxes)
    assert boxes.dim() == 2 and boxes.shape[1] == 5 and 0 < len(boxes) <= 30


def test_tiny_predicts_rotated_boxes_after_rotated_nms(tiny):
    from harness.geometry.rotated import rotated_iou

    _, model = tiny
    batch = torch.randn(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    out = _predict(model, batch)
    nms_thr = model.bbox_head.test_cfg.nms.iou_threshold
    for sample in out:
        inst = sample.pred_instances
        boxes, labels = _box_tensor(inst.bboxes), inst.labels
        assert boxes.shape[1] == 5
        assert 0 < len(boxes) <= 30 and torch.isfinite(boxes).all()
        # the rotated NMS ran class-aware: no two kept boxes of one class overlap above its threshold
        iou = rotated_iou(boxes.double(), boxes.double())
        same = labels[:, None] == labels[None, :]
        off_diag = ~torch.eye(len(boxes), dtype=torch.bool)
        assert not (iou[same & off_diag] > nms_thr + 1e-6).any()


def test_tiny_training_step_with_the_configs_own_loss_and_assigner(tiny):
    """RotatedIoULoss + QualityFocalLoss, DSL assigner with RBboxOverlaps2D: finite losses, and
    finite, non-zero gradients reaching the angle branch (the rotated IoU loss depends on it)."""
    from harness.models.mmyolo_build import build_model

    cfg, _ = tiny
    model = build_model(cfg, "random", seed=0).train()
    head = model.bbox_head
    assert type(head.loss_bbox).__name__ == "RotatedIoULoss"
    assert type(head.assigner.iou_calculator).__name__ == "RBboxOverlaps2D"
    # yolov5_collate's layout: [image index, label, cx, cy, w, h, angle]
    targets = torch.tensor([[0, 1, 40., 50, 36, 14, 0.3], [0, 3, 90, 80, 40, 20, -0.7],
                            [1, 2, 64, 64, 60, 24, 1.2]])
    samples = dict(bboxes_labels=targets,
                   img_metas=[dict(img_shape=(IMGSZ, IMGSZ), batch_input_shape=(IMGSZ, IMGSZ))] * 2)
    batch = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(2))
    losses = model.loss(batch, samples)
    assert set(losses) == {"loss_cls", "loss_bbox"}
    assert all(torch.isfinite(v) and float(v) > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    for branch in ("rtm_ang", "rtm_reg", "rtm_cls"):
        assert any(branch in n and g.abs().sum() > 0 for n, g in grads.items()), branch
