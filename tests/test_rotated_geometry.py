"""Rotated boxes: conversions, exact IoU and NMS against shapely's exact polygon operations."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="harness.geometry.rotated is torch code")
import shapely  # noqa: E402  (the exact polygon oracle; a dev dependency, never skipped)
from shapely import affinity  # noqa: E402
from shapely.geometry import box as shapely_box  # noqa: E402

from harness.geometry import rotated as R  # noqa: E402

PI = math.pi


def polygons(boxes) -> np.ndarray:
    """Shapely polygons of rotated boxes, built independently of rbox_to_corners:
    an axis-aligned rectangle rotated about its centre by shapely (counter-clockwise
    in y-up axes = from +x towards +y, the mmrotate/mmcv 'clockwise' image convention)."""
    out = []
    for cx, cy, w, h, a in np.asarray(boxes, dtype=np.float64).tolist():
        rect = shapely_box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        out.append(affinity.rotate(rect, a, origin=(cx, cy), use_radians=True))
    return np.array(out, dtype=object)


def shapely_iou(b1, b2, aligned=False, mode="iou") -> np.ndarray:
    p1, p2 = polygons(b1), polygons(b2)
    a1, a2 = shapely.area(p1), shapely.area(p2)
    if aligned:
        i, j = np.arange(len(p1)), np.arange(len(p2))
        out = np.zeros(len(p1))
    else:  # only pairs whose polygons intersect (STRtree), the rest is 0
        i, j = shapely.STRtree(p2).query(p1, predicate="intersects").astype(int)
        out = np.zeros((len(p1), len(p2)))
    inter = shapely.area(shapely.intersection(p1[i], p2[j]))
    denom = a1[i] + a2[j] - inter if mode == "iou" else a1[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        val = np.where(denom > 0, inter / np.where(denom > 0, denom, 1), 0.0)
    if aligned:
        return val
    out[i, j] = val
    return out


def random_boxes(n, seed, spread=60.0, size=(2.0, 40.0), dtype=torch.float64):
    g = np.random.default_rng(seed)
    ctr = g.uniform(0, spread, (n, 2))
    wh = g.uniform(*size, (n, 2))
    ang = g.uniform(-PI / 2, PI / 2, (n, 1))
    return torch.tensor(np.concatenate([ctr, wh, ang], 1), dtype=dtype)


# --- conventions -------------------------------------------------------------------------------

def test_corners_follow_mmrotate_rbox2qbox():
    # mmrotate rbox2qbox: v1 = w/2 (cos, sin), v2 = h/2 (-sin, cos); c+v1+v2, c+v1-v2, c-v1-v2, c-v1+v2
    got = R.rbox_to_corners(torch.tensor([[10.0, 20.0, 4.0, 2.0, PI / 2]]))[0]
    exp = torch.tensor([[9.0, 22.0], [11.0, 22.0], [11.0, 18.0], [9.0, 18.0]], dtype=got.dtype)
    assert torch.allclose(got, exp, atol=1e-6)
    got = R.rbox_to_corners(torch.tensor([1.0, 2.0, 4.0, 2.0, 0.0], dtype=torch.float64))
    assert got.tolist() == [[3.0, 3.0], [3.0, 1.0], [-1.0, 1.0], [-1.0, 3.0]]
    # the same region as the independent shapely construction
    b = random_boxes(20, seed=1)
    for c, p in zip(R.rbox_to_corners(b).numpy(), polygons(b)):
        assert shapely.Polygon(c).symmetric_difference(p).area < 1e-9


def test_hbox_encloses_corners():
    b = random_boxes(50, seed=2)
    hb, c = R.rbox_to_hbox(b), R.rbox_to_corners(b)
    assert torch.allclose(hb[:, :2], c.min(1).values, atol=1e-9)
    assert torch.allclose(hb[:, 2:], c.max(1).values, atol=1e-9)


def test_normalize_le90_range_and_region():
    g = np.random.default_rng(3)
    raw = random_boxes(200, seed=3).numpy()
    raw[:, 4] = g.uniform(-3 * PI, 3 * PI, 200)
    raw[:50, 3] = raw[:50, 2]  # squares
    raw[50:60, 4] = -PI / 2
    raw[60:70, 4] = PI / 2
    n = R.normalize_le90(torch.tensor(raw))
    assert ((n[:, 4] >= -PI / 2) & (n[:, 4] < PI / 2)).all()
    assert (n[:, 2] >= n[:, 3]).all()
    for p, q in zip(polygons(raw), polygons(n)):
        assert p.symmetric_difference(q).area < 1e-8 * p.area
    # mmrotate's rule on squares: sides swap and the angle turns by pi/2
    sq = R.normalize_le90(torch.tensor([[0.0, 0.0, 3.0, 3.0, 0.25]], dtype=torch.float64))[0]
    assert sq[4].item() == pytest.approx(0.25 + PI / 2 - PI)
    # the boundary: pi/2 maps to -pi/2
    assert R.normalize_le90(torch.tensor([0.0, 0, 5, 2, PI / 2], dtype=torch.float64))[4].item() == \
        pytest.approx(-PI / 2)


def test_corners_to_rbox_round_trip():
    b = random_boxes(300, seed=4)
    n = R.normalize_le90(b)
    back = R.corners_to_rbox(R.rbox_to_corners(b))
    assert torch.allclose(back[:, :4], n[:, :4], atol=1e-9)
    da = (back[:, 4] - n[:, 4]).abs()
    assert (torch.minimum(da, PI - da) < 1e-9).all()  # the same angle modulo pi
    flat = R.corners_to_rbox(R.rbox_to_corners(b).reshape(-1, 8))
    assert torch.equal(flat, back)
    assert R.corners_to_rbox(R.rbox_to_corners(b.float())).dtype == torch.float32


def test_corners_to_rbox_is_min_area_rect_of_quadrilaterals():
    g = np.random.default_rng(5)
    quads = g.uniform(0, 100, (100, 4, 2))
    rb = R.corners_to_rbox(torch.tensor(quads))
    for q, r, p in zip(quads, rb.numpy(), polygons(rb)):
        ref = shapely.MultiPoint(q).minimum_rotated_rectangle.area
        assert r[2] * r[3] == pytest.approx(ref, rel=1e-9, abs=1e-9)
        assert p.buffer(1e-7).contains(shapely.MultiPoint(q))
    # coincident points: a zero-size box at the point; collinear points: a zero-height box
    z = R.corners_to_rbox(torch.tensor([[3.0, 4.0] * 4], dtype=torch.float64))[0]
    assert z[:4].tolist() == [3.0, 4.0, 0.0, 0.0] and not torch.isnan(z).any()
    seg = R.corners_to_rbox(torch.tensor([[0.0, 0, 1, 1, 2, 2, 3, 3]], dtype=torch.float64))[0]
    assert seg.tolist() == pytest.approx([1.5, 1.5, 3 * math.sqrt(2), 0.0, PI / 4])


# --- IoU against shapely -----------------------------------------------------------------------

def test_iou_random_pairs_match_shapely():
    a, b = random_boxes(40, seed=6, spread=80), random_boxes(30, seed=7, spread=80)
    got = R.rotated_iou(a, b)
    ref = shapely_iou(a, b)
    assert got.shape == (40, 30) and got.dtype == torch.float64
    assert (ref > 0).sum() > 200  # plenty of overlapping pairs
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12)
    aligned = R.rotated_iou(a[:30], b, aligned=True)
    np.testing.assert_allclose(aligned.numpy(), shapely_iou(a[:30], b, aligned=True), rtol=0, atol=1e-12)
    iof = R.rotated_iou(a, b, mode="iof")
    np.testing.assert_allclose(iof.numpy(), shapely_iou(a, b, mode="iof"), rtol=0, atol=1e-12)
    f32 = R.rotated_iou(a.float(), b.float())
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32.numpy(), ref, rtol=0, atol=1e-5)


def test_iou_near_pairs_match_shapely():
    # pairs built to overlap heavily: jittered copies, including near-parallel edges
    g = np.random.default_rng(8)
    a = random_boxes(400, seed=8).numpy()
    b = a.copy()
    b[:, :2] += g.normal(0, 1.0, (400, 2))
    b[:, 2:4] *= g.uniform(0.7, 1.3, (400, 2))
    b[:, 4] += g.choice([0.0, 1e-9, 1e-4, 0.1, PI / 2], 400) * g.choice([-1, 1], 400)
    got = R.rotated_iou(torch.tensor(a), torch.tensor(b), aligned=True).numpy()
    np.testing.assert_allclose(got, shapely_iou(a, b, aligned=True), rtol=0, atol=1e-12)


@pytest.mark.parametrize("w,h", [(0.0, 5.0), (5.0, 0.0), (0.0, 0.0), (-4.0, -3.0)])
def test_zero_area_boxes_give_zero_not_nan(w, h):
    z = torch.tensor([[10.0, 10.0, w, h, 0.3]], dtype=torch.float64)
    others = torch.cat([z, torch.tensor([[10.0, 10.0, 8.0, 6.0, -0.2], [10.0, 10.0, w, h, 0.3]],
                                        dtype=torch.float64)])
    for mode in ("iou", "iof"):
        got = R.rotated_iou(z, others, mode=mode)
        assert not torch.isnan(got).any() and (got == 0).all()
        got = R.rotated_iou(others, z, mode=mode)
        assert not torch.isnan(got).any() and (got == 0).all()
    if w < 0:
        return  # invalid (negative) sides: the public functions treat them as empty, checked above
    # and straight through the polygon step (no prefilter): no NaN either
    inter, _, _ = R._intersection(z.repeat(3, 1), others)
    assert not torch.isnan(inter).any() and (inter.abs() < 1e-12).all()


def test_identical_nested_and_touching():
    b = random_boxes(30, seed=9)
    assert torch.allclose(R.rotated_iou(b, b).diagonal(), torch.ones(30, dtype=torch.float64), atol=1e-12)
    inner = b.clone()
    inner[:, 2:4] *= 0.5  # same centre and angle: nested, IoU = 1/4
    got = R.rotated_iou(inner, b, aligned=True)
    assert torch.allclose(got, torch.full((30,), 0.25, dtype=torch.float64), atol=1e-12)
    off = inner.clone()  # nested but off-centre, inside the big box
    off[:, 0] += 0.2 * b[:, 2] * torch.cos(b[:, 4])
    off[:, 1] += 0.2 * b[:, 2] * torch.sin(b[:, 4])
    np.testing.assert_allclose(R.rotated_iou(off, b, aligned=True).numpy(), 0.25, atol=1e-12)
    np.testing.assert_allclose(R.rotated_iou(off, b, aligned=True, mode="iof").numpy(), 1.0, atol=1e-12)
    # touching along a full edge, along part of an edge, and at a corner only
    base = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.7]] * 3, dtype=torch.float64)
    u = torch.tensor([math.cos(0.7), math.sin(0.7)], dtype=torch.float64)
    v = torch.tensor([-math.sin(0.7), math.cos(0.7)], dtype=torch.float64)
    moved = base.clone()
    moved[0, :2] = 4.0 * u
    moved[1, :2] = 2.0 * v + 1.5 * u
    moved[2, :2] = 4.0 * u + 2.0 * v
    got = R.rotated_iou(base, moved, aligned=True)
    assert not torch.isnan(got).any() and (got.abs() < 1e-12).all()
    np.testing.assert_allclose(got.numpy(), shapely_iou(base, moved, aligned=True), atol=1e-12)


def test_ninety_degree_symmetric_representations():
    a, b = random_boxes(40, seed=10), random_boxes(40, seed=11)
    swapped = a[:, [0, 1, 3, 2, 4]].clone()
    swapped[:, 4] += torch.tensor([PI / 2, -PI / 2] * 20, dtype=torch.float64)
    np.testing.assert_allclose(R.rotated_iou(a, swapped, aligned=True).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(R.rotated_iou(swapped, b).numpy(), R.rotated_iou(a, b).numpy(),
                               rtol=0, atol=1e-12)


def test_angles_at_the_le90_boundary():
    b = torch.tensor([[5.0, 5.0, 8.0, 3.0, -PI / 2], [5.0, 5.0, 8.0, 3.0, PI / 2],
                      [5.0, 5.0, 8.0, 3.0, PI / 2 - 1e-12], [5.0, 5.0, 8.0, 3.0, -PI / 2 + 1e-7],
                      [5.0, 5.0, 3.0, 8.0, 0.0]], dtype=torch.float64)
    got = R.rotated_iou(b, b)
    np.testing.assert_allclose(got.numpy(), shapely_iou(b, b), atol=1e-12)
    np.testing.assert_allclose(got[:3, :3].numpy(), 1.0, atol=1e-11)
    assert got[0, 4].item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("scale,shift", [(1e-6, 0.0), (1e-6, 1e3), (1e6, 0.0), (1e3, 1e7), (1.0, 1e9)])
def test_tiny_and_huge_scales(scale, shift):
    a, b = random_boxes(30, seed=12, spread=40), random_boxes(30, seed=13, spread=40)
    ref = R.rotated_iou(a, b)
    assert (ref > 0).sum() > 30
    sa, sb = a.clone(), b.clone()
    for x in (sa, sb):
        x[:, :4] *= scale
        x[:, :2] += shift
    got = R.rotated_iou(sa, sb)
    # the IoU is scale- and translation-invariant; the shift costs the centres their low bits
    tol = 1e-12 + 4 * np.finfo(np.float64).eps * shift / (2.0 * scale)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0, atol=tol)
    if shift == 0:
        np.testing.assert_allclose(got.numpy(), shapely_iou(sa, sb), rtol=0, atol=1e-9)


def test_needle_boxes_match_shapely():
    # aspect ratios down to 1e-6, crossing each other and lying almost along each other
    g = np.random.default_rng(14)
    n = 200
    a = np.concatenate([g.uniform(0, 5, (n, 2)), g.uniform(20, 40, (n, 1)),
                        10.0 ** g.uniform(-6, -1, (n, 1)) * 30, g.uniform(-PI / 2, PI / 2, (n, 1))], 1)
    b = a.copy()
    b[:, :2] += g.normal(0, 1e-3, (n, 2))
    b[:, 3] *= g.uniform(0.5, 2, n)
    b[:, 4] += g.choice([0.0, 1e-7, 1e-3, 0.5], n)
    got = R.rotated_iou(torch.tensor(a), torch.tensor(b), aligned=True).numpy()
    ref = shapely_iou(a, b, aligned=True)
    assert (ref > 0.01).sum() > 50
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_tiny_box_inside_huge_box():
    big = torch.tensor([[0.0, 0.0, 1e6, 5e5, 0.3]], dtype=torch.float64)
    tiny = torch.tensor([[10.0, -20.0, 1e-3, 2e-3, -1.1]], dtype=torch.float64)
    assert R.rotated_iou(tiny, big).item() == pytest.approx(2e-6 / 5e11, rel=1e-9)
    assert R.rotated_iou(tiny, big, mode="iof").item() == pytest.approx(1.0, abs=1e-12)


def test_empty_and_bad_shapes():
    e = torch.zeros(0, 5)
    assert R.rotated_iou(e, random_boxes(3, 0)).shape == (0, 3)
    assert R.rotated_iou(random_boxes(3, 0), e).shape == (3, 0)
    assert R.nms_rotated(e, torch.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        R.rotated_iou(torch.zeros(3, 4), e)
    with pytest.raises(ValueError, match="differ in number"):
        R.rotated_iou(random_boxes(3, 0), random_boxes(2, 0), aligned=True)


# --- NMS ---------------------------------------------------------------------------------------

def greedy_oracle(iou, scores, thr, labels=None):
    """Textbook greedy NMS on a (shapely) IoU matrix: stable descending order, suppress when IoU > thr."""
    labels = np.zeros(len(scores), dtype=int) if labels is None else np.asarray(labels)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep, removed = [], np.zeros(len(scores), dtype=bool)
    for i in order:
        if removed[i]:
            continue
        keep.append(int(i))
        removed |= (labels == labels[i]) & (iou[i] > thr)  # earlier ones were visited already
    return keep


def clustered(n, seed, clusters=12, spread=200):
    """Boxes jittered around a few objects (as detector candidates are), with tied scores."""
    g = np.random.default_rng(seed)
    obj = random_boxes(clusters, seed=seed + 100, spread=spread, size=(8, 50)).numpy()
    pick = g.integers(0, clusters, n)
    b = obj[pick].copy()
    b[:, :2] += g.normal(0, 3, (n, 2))
    b[:, 2:4] *= g.uniform(0.75, 1.25, (n, 2))
    b[:, 4] += g.normal(0, 0.15, n)
    scores = np.round(g.uniform(0, 1, n), 2)  # rounding makes ties
    return torch.tensor(b), torch.tensor(scores), torch.tensor(g.integers(0, 3, n))


@functools.lru_cache(maxsize=None)
def nms_scene(n, seed, clusters=12, spread=200):
    boxes, scores, labels = clustered(n, seed, clusters, spread)
    return boxes, scores, labels, shapely_iou(boxes, boxes)


@pytest.fixture(params=["blocks", "all_pairs"])
def strategy(request, monkeypatch):
    """Both NMS schedules (CPU: blocks, CUDA: all pairs) run here on CPU."""
    monkeypatch.setattr(R, "_strategy", lambda device: request.param)
    return request.param


def test_nms_matches_shapely_greedy(monkeypatch, strategy):
    monkeypatch.setattr(R, "_BLOCK", 16)  # many blocks: exercises the cross-block step
    monkeypatch.setattr(R, "_DENSE", 1000)  # all pairs in several row chunks
    boxes, scores, labels, iou = nms_scene(120, seed=20)
    for thr in (0.1, 0.5, 0.7):
        exp = greedy_oracle(iou, scores, thr)
        assert R.nms_rotated(boxes, scores, thr).tolist() == exp
        assert 5 < len(exp) < 100
        assert R.batched_nms_rotated(boxes, scores, labels, thr).tolist() == \
            greedy_oracle(iou, scores, thr, labels)


def test_nms_default_block_and_float32(strategy):
    boxes, scores, labels, iou = nms_scene(200, seed=21, clusters=40, spread=400)
    assert len(boxes) > R._BLOCK
    exp = greedy_oracle(iou, scores, 0.3)
    assert R.nms_rotated(boxes, scores, 0.3).tolist() == exp
    assert R.nms_rotated(boxes.float(), scores.float(), 0.3).tolist() == exp
    assert R.batched_nms_rotated(boxes, scores, labels, 0.3).tolist() == \
        greedy_oracle(iou, scores, 0.3, labels)


def test_nms_ties_identical_and_degenerate(strategy):
    b = torch.tensor([[5.0, 5, 4, 2, 0.3]] * 3 + [[50.0, 50, 0, 3, 0.1]] * 2, dtype=torch.float64)
    s = torch.tensor([0.5, 0.5, 0.5, 0.9, 0.9])
    # identical boxes: the first of the tied scores stays; zero-area boxes never suppress (IoU 0)
    assert R.nms_rotated(b, s, 0.5).tolist() == [3, 4, 0]
    # a negative threshold suppresses everything after the first (per label)
    assert R.nms_rotated(b, s, -0.1).tolist() == [3]
    assert R.batched_nms_rotated(b, s, torch.tensor([0, 1, 0, 1, 1]), -0.1).tolist() == [3, 0]
    # threshold 1: nothing exceeds it
    assert R.nms_rotated(b, s, 1.0).tolist() == [3, 4, 0, 1, 2]


# --- CUDA ----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_cuda_equals_cpu():
    a, b = random_boxes(400, seed=30, spread=300), random_boxes(300, seed=31, spread=300)
    ga, gb = a.cuda(), b.cuda()
    for mode in ("iou", "iof"):
        cpu, gpu = R.rotated_iou(a, b, mode=mode), R.rotated_iou(ga, gb, mode=mode)
        assert gpu.is_cuda and (cpu > 0).sum() > 1000
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-12)
    torch.testing.assert_close(R.rotated_iou(ga[:300], gb, aligned=True).cpu(),
                               R.rotated_iou(a[:300], b, aligned=True), rtol=0, atol=1e-12)
    torch.testing.assert_close(R.rotated_iou(ga.float(), gb.float()).cpu(),
                               R.rotated_iou(a.float(), b.float()), rtol=0, atol=1e-6)
    np.testing.assert_allclose(R.rotated_iou(ga[:60], gb[:60]).cpu().numpy(), shapely_iou(a[:60], b[:60]),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(R.corners_to_rbox(R.rbox_to_corners(ga)).cpu(),
                               R.corners_to_rbox(R.rbox_to_corners(a)), rtol=0, atol=1e-9)
    boxes, scores, labels = clustered(3000, seed=32, clusters=80, spread=1500)
    for thr in (0.1, 0.5):
        cpu = R.nms_rotated(boxes, scores, thr)
        gpu = R.nms_rotated(boxes.cuda(), scores.cuda(), thr)
        assert gpu.is_cuda and gpu.cpu().tolist() == cpu.tolist() and len(cpu) > 80
        cpu = R.batched_nms_rotated(boxes, scores, labels, thr)
        gpu = R.batched_nms_rotated(boxes.cuda(), scores.cuda(), labels.cuda(), thr)
        assert gpu.cpu().tolist() == cpu.tolist()
