"""Rotated boxes in mmrotate's ``le90`` convention: conversions, exact IoU, NMS.

Leaf module: it imports torch and numpy and nothing from harness.

Convention (mmrotate 1.0.0rc1 ``rbox2qbox``/``RotatedBoxes``, mmcv
``box_iou_rotated(clockwise=True)``): a box is ``(cx, cy, w, h, angle)`` with the
angle in radians; ``w`` runs along ``(cos a, sin a)`` and ``h`` along
``(-sin a, cos a)``.  In image coordinates (y down) a positive angle turns the
box clockwise on screen.  The corners are, in this order,
``c + v1 + v2, c + v1 - v2, c - v1 - v2, c - v1 + v2`` with
``v1 = w/2 (cos a, sin a)`` and ``v2 = h/2 (-sin a, cos a)``.  ``le90``
normalisation makes ``w > h`` (a square gets its sides swapped, as mmrotate's
``regularize_boxes`` does) and puts the angle in ``[-pi/2, pi/2)``.  mmcv's
``clockwise=False`` boxes are these with the angle negated.

IoU is exact: the intersection of two rectangles is the convex polygon spanned
by the corners of each box inside the other and the crossings of their edges;
those (at most 24) candidate points are ordered by angle around their mean and
the shoelace formula gives the area.  Everything runs batched in float64 on
the input's device.  Each pair is first translated to the first box's centre
and scaled by the pair's largest side, so huge coordinates and tiny or huge
boxes keep full precision and the inclusion tolerances (``1e-12`` of that side)
are scale-free.  Pairs whose enclosing axis-aligned boxes do not overlap, and
boxes of zero area, get IoU 0 without the polygon step (never NaN).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["normalize_le90", "rbox_to_corners", "corners_to_rbox", "rbox_to_hbox",
           "rotated_iou", "nms_rotated", "batched_nms_rotated"]

_HALF_PI = math.pi / 2
_BLOCK = 128              # NMS block size (candidates compared against the kept ones per step)
_PAIRS = {"cpu": 1 << 13, "cuda": 1 << 18}  # exact-polygon pairs per vectorised chunk
_DENSE = 1 << 22          # elements of one dense N x M prefilter chunk
_EPS = 1e-12              # inclusion tolerance, in units of the pair's largest side


def _float(x) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.to(torch.float64)


def _check_boxes(boxes, name: str) -> torch.Tensor:
    t = _float(boxes)
    if t.dim() != 2 or t.shape[-1] != 5:
        raise ValueError(f"{name}: expected rotated boxes of shape [N, 5] (cx, cy, w, h, angle), "
                         f"got {tuple(t.shape)}")
    return t


def normalize_le90(boxes) -> torch.Tensor:
    """``[..., 5]`` boxes in le90 form: ``w > h`` unless equal, angle in ``[-pi/2, pi/2)``.

    Same rule as mmrotate's ``RotatedBoxes.regularize_boxes(pattern='le90')``:
    where ``w <= h`` the sides swap and the angle turns by ``pi/2``; then the
    angle is taken modulo ``pi``.  The region covered does not change.
    """
    b = _float(boxes)
    x, y, w, h, t = b.unbind(-1)
    longer = w > h
    w2, h2 = torch.where(longer, w, h), torch.where(longer, h, w)
    t = torch.where(longer, t, t + _HALF_PI)
    t = torch.remainder(t + _HALF_PI, math.pi) - _HALF_PI
    t = torch.where(t >= _HALF_PI, t - math.pi, t)  # remainder may round up to pi itself
    return torch.stack([x, y, w2, h2, t], dim=-1)


def _corners(ctr, w, h, cos, sin) -> torch.Tensor:
    v1 = torch.stack([w * cos, w * sin], dim=-1) * 0.5
    v2 = torch.stack([-h * sin, h * cos], dim=-1) * 0.5
    return torch.stack([ctr + v1 + v2, ctr + v1 - v2, ctr - v1 - v2, ctr - v1 + v2], dim=-2)


def rbox_to_corners(boxes) -> torch.Tensor:
    """``[..., 5]`` rotated boxes -> ``[..., 4, 2]`` corners in mmrotate's ``rbox2qbox`` order."""
    b = _float(boxes)
    if b.shape[-1] != 5:
        raise ValueError(f"rbox_to_corners: expected [..., 5] boxes, got {tuple(b.shape)}")
    t = b[..., 4]
    return _corners(b[..., :2], b[..., 2], b[..., 3], torch.cos(t), torch.sin(t))


def rbox_to_hbox(boxes) -> torch.Tensor:
    """``[..., 5]`` rotated boxes -> ``[..., 4]`` enclosing axis-aligned ``x1, y1, x2, y2``."""
    b = _float(boxes)
    t = b[..., 4]
    cos, sin = torch.cos(t).abs(), torch.sin(t).abs()
    w, h = b[..., 2].abs() * 0.5, b[..., 3].abs() * 0.5
    dx, dy = w * cos + h * sin, w * sin + h * cos
    cx, cy = b[..., 0], b[..., 1]
    return torch.stack([cx - dx, cy - dy, cx + dx, cy + dy], dim=-1)


_PAIR_I = (0, 1, 2, 3, 0, 1)
_PAIR_J = (1, 2, 3, 0, 2, 3)


def corners_to_rbox(poly) -> torch.Tensor:
    """``[..., 8]`` or ``[..., 4, 2]`` quadrilaterals -> ``[..., 5]`` minimum-area rotated boxes, le90.

    The minimum-area enclosing rectangle of a point set has a side along an edge
    of its convex hull (Freeman & Shapira 1975); the hull edges of four points
    are among the six directions joining two of them, so trying those six is
    exact.  Coincident points give a zero-size box at the point.
    """
    p = _float(poly)
    if p.shape[-1] == 8:
        p = p.reshape(*p.shape[:-1], 4, 2)
    elif p.dim() < 2 or tuple(p.shape[-2:]) != (4, 2):
        raise ValueError(f"corners_to_rbox: expected [..., 8] or [..., 4, 2] corners, got {tuple(p.shape)}")
    out_dtype = p.dtype
    p = p.to(torch.float64)
    i = torch.tensor(_PAIR_I, device=p.device)
    j = torch.tensor(_PAIR_J, device=p.device)
    d = p[..., j, :] - p[..., i, :]                      # [..., 6, 2]
    length = torch.linalg.vector_norm(d, dim=-1)
    ok = length > 0
    safe = torch.where(ok, length, torch.ones_like(length))
    ux = torch.where(ok, d[..., 0] / safe, torch.ones_like(length))
    uy = torch.where(ok, d[..., 1] / safe, torch.zeros_like(length))
    px, py = p[..., 0].unsqueeze(-2), p[..., 1].unsqueeze(-2)       # [..., 1, 4]
    along = px * ux.unsqueeze(-1) + py * uy.unsqueeze(-1)           # [..., 6, 4]
    across = -px * uy.unsqueeze(-1) + py * ux.unsqueeze(-1)
    amin, amax = along.min(-1).values, along.max(-1).values
    bmin, bmax = across.min(-1).values, across.max(-1).values
    w, h = amax - amin, bmax - bmin
    area = torch.where(ok, w * h, torch.full_like(w, math.inf))
    k = area.argmin(-1, keepdim=True)

    def pick(t):
        return t.gather(-1, k).squeeze(-1)

    ux_, uy_ = pick(ux), pick(uy)
    ca, cb = (pick(amax) + pick(amin)) * 0.5, (pick(bmax) + pick(bmin)) * 0.5
    cx, cy = ca * ux_ - cb * uy_, ca * uy_ + cb * ux_
    rb = torch.stack([cx, cy, pick(w), pick(h), torch.atan2(uy_, ux_)], dim=-1)
    return normalize_le90(rb).to(out_dtype)


def _cross(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _intersection(a: torch.Tensor, b: torch.Tensor):
    """Exact intersection areas of aligned float64 pairs ``a[P, 5]``, ``b[P, 5]``.

    Returns ``(inter, area_a, area_b)`` in units of ``s**2``, ``s`` the pair's
    largest side (ratios of them are what callers need).
    """
    s = torch.maximum(a[:, 2:4].amax(-1), b[:, 2:4].amax(-1))
    s = s.clamp_min(torch.finfo(torch.float64).tiny)
    d = (b[:, :2] - a[:, :2]) / s[:, None]              # b's centre, a's centre at the origin
    wa, ha, wb, hb = a[:, 2] / s, a[:, 3] / s, b[:, 2] / s, b[:, 3] / s
    ca, sa, cb, sb = torch.cos(a[:, 4]), torch.sin(a[:, 4]), torch.cos(b[:, 4]), torch.sin(b[:, 4])
    pa = _corners(torch.zeros_like(d), wa, ha, ca, sa)  # [P, 4, 2]
    pb = _corners(d, wb, hb, cb, sb)

    def inside(pts, ctr, w, h, cos, sin):
        q = pts - ctr[:, None, :]
        lx = q[..., 0] * cos[:, None] + q[..., 1] * sin[:, None]
        ly = -q[..., 0] * sin[:, None] + q[..., 1] * cos[:, None]
        return (lx.abs() <= w[:, None] * 0.5 + _EPS) & (ly.abs() <= h[:, None] * 0.5 + _EPS)

    in_a = inside(pa, d, wb, hb, cb, sb)                # corners of a inside b
    in_b = inside(pb, torch.zeros_like(d), wa, ha, ca, sa)
    ra = (pa.roll(-1, dims=1) - pa)[:, :, None, :]      # edges of a   [P, 4, 1, 2]
    rb = (pb.roll(-1, dims=1) - pb)[:, None, :, :]      # edges of b   [P, 1, 4, 2]
    qp = pb[:, None, :, :] - pa[:, :, None, :]          # [P, 4, 4, 2]
    den = _cross(ra, rb)
    scale = torch.linalg.vector_norm(ra, dim=-1) * torch.linalg.vector_norm(rb, dim=-1)
    hit = den.abs() > _EPS * scale                      # not parallel, no zero-length edge
    den = torch.where(hit, den, torch.ones_like(den))
    t = _cross(qp, rb) / den
    u = _cross(qp, ra) / den
    hit &= (t >= -_EPS) & (t <= 1 + _EPS) & (u >= -_EPS) & (u <= 1 + _EPS)
    cross_pts = pa[:, :, None, :] + t[..., None] * ra   # [P, 4, 4, 2]
    n = len(a)
    pts = torch.cat([pa, pb, cross_pts.reshape(n, 16, 2)], dim=1)     # [P, 24, 2]
    mask = torch.cat([in_a, in_b, hit.reshape(n, 16)], dim=1)
    count = mask.sum(1)
    centre = torch.where(mask[..., None], pts, torch.zeros_like(pts)).sum(1)
    centre = centre / count.clamp_min(1)[:, None]
    rel = pts - centre[:, None, :]
    ang = torch.atan2(rel[..., 1], rel[..., 0])
    ang = torch.where(mask, ang, torch.full_like(ang, 4.0))  # unused points sort last
    order = ang.argsort(dim=1)
    rel = rel.gather(1, order[..., None].expand(-1, -1, 2))
    mask = mask.gather(1, order)
    rel = torch.where(mask[..., None], rel, rel[:, :1, :])   # unused points repeat the first one
    twice = _cross(rel, rel.roll(-1, dims=1)).sum(1)
    area_a, area_b = wa * ha, wb * hb
    inter = torch.where(count >= 3, twice.abs() * 0.5, torch.zeros_like(twice))
    inter = torch.minimum(inter, torch.minimum(area_a, area_b))
    return inter, area_a, area_b


def _ratio(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """IoU (or intersection over a's area) of aligned float64 pairs, chunked."""
    out = torch.empty(len(a), dtype=torch.float64, device=a.device)
    step = _PAIRS.get(a.device.type, _PAIRS["cuda"])
    for lo in range(0, len(a), step):
        inter, area_a, area_b = _intersection(a[lo:lo + step], b[lo:lo + step])
        denom = area_a + area_b - inter if mode == "iou" else area_a
        good = denom > 0
        val = inter / torch.where(good, denom, torch.ones_like(denom))
        out[lo:lo + step] = torch.where(good, val, torch.zeros_like(val)).clamp_(0.0, 1.0)
    return out


def _overlap(ha: torch.Tensor, hb: torch.Tensor) -> torch.Tensor:
    """Enclosing boxes overlap with positive area (broadcasting ``[..., 4]`` xyxy)."""
    return ((torch.minimum(ha[..., 2], hb[..., 2]) > torch.maximum(ha[..., 0], hb[..., 0]))
            & (torch.minimum(ha[..., 3], hb[..., 3]) > torch.maximum(ha[..., 1], hb[..., 1])))


def rotated_iou(boxes1, boxes2, aligned: bool = False, mode: str = "iou") -> torch.Tensor:
    """Exact IoU of rotated boxes: ``[N, 5] x [M, 5] -> [N, M]`` (``aligned``: ``[N, 5] x [N, 5] -> [N]``).

    ``mode="iof"`` gives intersection over the area of ``boxes1`` instead (as
    mmcv's ``box_iou_rotated``).  Computed in float64 on the inputs' device and
    returned in their (promoted) floating dtype.  Zero-area boxes (and boxes
    with a negative side, which are invalid) give 0.
    """
    if mode not in ("iou", "iof"):
        raise ValueError(f"rotated_iou: mode must be 'iou' or 'iof', got {mode!r}")
    a, b = _check_boxes(boxes1, "boxes1"), _check_boxes(boxes2, "boxes2")
    if a.device != b.device:
        raise ValueError(f"rotated_iou: boxes on different devices ({a.device}, {b.device})")
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(torch.float64), b.to(torch.float64)
    ha, hb = rbox_to_hbox(a), rbox_to_hbox(b)
    pos_a, pos_b = (a[:, 2] > 0) & (a[:, 3] > 0), (b[:, 2] > 0) & (b[:, 3] > 0)  # a negative side: empty
    if aligned:
        if len(a) != len(b):
            raise ValueError(f"rotated_iou(aligned=True): {len(a)} and {len(b)} boxes differ in number")
        out = torch.zeros(len(a), dtype=torch.float64, device=a.device)
        idx = (_overlap(ha, hb) & pos_a & pos_b).nonzero().flatten()
        if len(idx):
            out[idx] = _ratio(a[idx], b[idx], mode)
        return out.to(out_dtype)
    n, m = len(a), len(b)
    out = torch.zeros(n, m, dtype=torch.float64, device=a.device)
    rows = max(1, _DENSE // max(m, 1))
    for lo in range(0, n, rows):
        cand = _overlap(ha[lo:lo + rows, None], hb[None]) & pos_a[lo:lo + rows, None] & pos_b[None]
        ii, jj = cand.nonzero(as_tuple=True)
        if len(ii):
            ii = ii + lo
            out[ii, jj] = _ratio(a[ii], b[jj], mode)
    return out.to(out_dtype)


def _candidates(b, hb, area, labels, qi, kj, thr: float) -> torch.Tensor:
    """``[Q, K]`` bool: pairs (b[qi], b[kj]) whose IoU may exceed ``thr >= 0`` (cheap tests only)."""
    aq, ak = area[qi][:, None], area[kj][None, :]
    # IoU <= min(area) / max(area): pairs too different in size cannot exceed thr (kept loose
    # by 1e-9 so that rounding never drops a pair that the exact test would suppress).
    cand = (_overlap(hb[qi][:, None], hb[kj][None]) & (aq > 0) & (ak > 0)
            & (torch.minimum(aq, ak) >= thr * (1 - 1e-9) * torch.maximum(aq, ak)))
    if labels is not None:
        cand &= labels[qi][:, None] == labels[kj][None, :]
    return cand


def _exceeds(b, hb, area, labels, qi, kj, thr: float) -> torch.Tensor:
    """``[Q, K]`` bool: IoU(b[qi], b[kj]) > thr >= 0 (and the same label when labels are given)."""
    cand = _candidates(b, hb, area, labels, qi, kj, thr)
    out = torch.zeros_like(cand)
    ii, jj = cand.nonzero(as_tuple=True)
    if len(ii):
        out[ii, jj] = _ratio(b[qi[ii]], b[kj[jj]], "iou") > thr
    return out


def _greedy_blocks(b, hb, area, labels, thr: float) -> torch.Tensor:
    """Kept mask over score-sorted boxes: blocks of ``_BLOCK`` against the boxes kept before them.

    Computes IoU only against kept boxes (and inside a block): the cheaper way where
    each polygon step costs (CPU).
    """
    keep = torch.ones(len(b), dtype=torch.bool, device=b.device)
    for start in range(0, len(b), _BLOCK):
        stop = min(start + _BLOCK, len(b))
        blk = torch.arange(start, stop, device=b.device)
        kept = keep[:start].nonzero().flatten()
        if len(kept):
            keep[start:stop] = ~_exceeds(b, hb, area, labels, blk, kept, thr).any(dim=1)
        alive = blk[keep[start:stop]]
        if len(alive) < 2:
            continue
        inner = torch.triu(_exceeds(b, hb, area, labels, alive, alive, thr), diagonal=1).cpu().numpy()
        local = [True] * len(alive)
        for i in range(len(alive)):
            if local[i]:
                for j in inner[i].nonzero()[0]:
                    local[j] = False
        keep[alive] = torch.tensor(local, device=b.device)
    return keep


def _greedy_all_pairs(b, hb, area, labels, thr: float) -> torch.Tensor:
    """Kept mask over score-sorted boxes: every pair's IoU at once, then the greedy pass on the host.

    The suppressing pairs (i < j, IoU > thr) come back as a sparse list; few
    large batched steps and no per-block synchronisation suit a GPU, where the
    polygon step is cheap and each round trip is not.
    """
    n = len(b)
    rows = max(1, _DENSE // n)
    src, dst = [], []
    for lo in range(0, n, rows):
        qi = torch.arange(lo, min(lo + rows, n), device=b.device)
        kj = torch.arange(lo, n, device=b.device)  # j >= lo: the upper triangle and a little more
        cand = _candidates(b, hb, area, labels, qi, kj, thr) & (kj[None, :] > qi[:, None])
        ii, jj = cand.nonzero(as_tuple=True)
        if len(ii):
            hit = _ratio(b[qi[ii]], b[kj[jj]], "iou") > thr
            src.append(qi[ii][hit])
            dst.append(kj[jj][hit])
    keep = np.ones(n, dtype=bool)
    if src:
        i = torch.cat(src).cpu().numpy()
        j = torch.cat(dst).cpu().numpy()
        by_i = np.argsort(i, kind="stable")
        i, j = i[by_i], j[by_i]
        bounds = np.searchsorted(i, np.arange(n + 1))
        for p in np.unique(i):  # in visiting order; a suppressed box suppresses nothing
            if keep[p]:
                keep[j[bounds[p]:bounds[p + 1]]] = False
    return torch.from_numpy(keep).to(b.device)


def _strategy(device: torch.device) -> str:
    return "all_pairs" if device.type == "cuda" else "blocks"


def nms_rotated(boxes, scores, iou_threshold: float, labels=None) -> torch.Tensor:
    """Greedy rotated NMS; returns the kept indices (LongTensor) in visiting order.

    Same semantics as harness.compat.mmcv_ext.nms: candidates are visited in
    descending score order with a stable sort (equal scores keep their input
    order) and a box is suppressed when its exact rotated IoU with a kept box is
    strictly greater than ``iou_threshold``.  With ``labels``, only boxes of the
    same label suppress each other (see ``batched_nms_rotated``).

    Two schedules give the same result: on CPU block-wise (a block of
    ``_BLOCK`` candidates against the boxes kept before it, then greedily inside
    the block), on CUDA every candidate pair at once with the greedy pass on the
    host (benchmarks/rotated_geometry_speed.py measures both).
    """
    b = _check_boxes(boxes, "boxes")
    scores = torch.as_tensor(scores, device=b.device)
    if scores.shape != (len(b),):
        raise ValueError(f"nms_rotated: scores of shape {tuple(scores.shape)} for {len(b)} boxes")
    if labels is not None:
        labels = torch.as_tensor(labels, device=b.device)
        if labels.shape != (len(b),):
            raise ValueError(f"nms_rotated: labels of shape {tuple(labels.shape)} for {len(b)} boxes")
    if len(b) == 0:
        return torch.zeros(0, dtype=torch.long, device=b.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    thr = float(iou_threshold)
    if thr < 0:  # every IoU (>= 0) exceeds it: the first box of each label stays
        if labels is None:
            return order[:1]
        lab = labels[order].cpu().numpy()
        first = np.sort(np.unique(lab, return_index=True)[1])
        return order[torch.from_numpy(first).to(b.device)]
    b = b[order].to(torch.float64)
    labels = None if labels is None else labels[order]
    hb = rbox_to_hbox(b)
    area = b[:, 2].clamp_min(0) * b[:, 3].clamp_min(0)  # a negative side: empty, never suppresses
    greedy = _greedy_all_pairs if _strategy(b.device) == "all_pairs" else _greedy_blocks
    return order[greedy(b, hb, area, labels, thr)]


def batched_nms_rotated(boxes, scores, labels, iou_threshold: float) -> torch.Tensor:
    """Class-aware rotated NMS: boxes of different labels never suppress each other.

    Equal to running ``nms_rotated`` per label and merging in descending score
    order.  mmcv shifts axis-aligned boxes per class instead; for rotated boxes
    shifting the centres works as well (a translation applied to both boxes of a
    pair leaves their IoU unchanged, and a shift larger than the span of all
    boxes plus their largest circumradius makes boxes of different classes
    disjoint), but it loses precision on large coordinates, so this masks the
    pairs of different labels instead, which is exact.
    """
    if labels is None:
        raise ValueError("batched_nms_rotated: labels are required (use nms_rotated without them)")
    return nms_rotated(boxes, scores, iou_threshold, labels=labels)
