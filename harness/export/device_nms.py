"""mmyolo's postprocessing for a whole batch at once, on the tensors' own device.

:func:`harness.export.host_nms.host_postprocess` finishes decoded boxes/scores
image by image with mmdet/mmcv's helpers (and, on mmcv-lite, the plain-torch
NMS loop of :mod:`harness.compat.mmcv_ext`).  This module computes exactly the
same detections — same candidates, same order, same float arithmetic — for all
images of a batch together, so a CUDA cell never leaves the GPU until the
final (N, max_per_img) detections:

* score threshold and ``nms_pre`` top-k, per (prior, class) pair
  (``multi_label``) or on each prior's best class, as mmdet's
  ``filter_scores_and_topk`` (descending sort, equal scores in row-major
  order, Python-slice semantics for a negative ``nms_pre``);
* rescale to original pixels and the optional ``min_bbox_size`` filter;
* mmcv's ``batched_nms``: class-aware through its coordinate offset
  (``label * (max_coordinate + 1)``) below ``split_thr`` candidates — which
  lets boxes of different classes interact when coordinates are negative, as
  mmcv does — and per class at or above it; suppression when IoU is strictly
  greater than the threshold, areas with mmcv's ``offset``;
* ``max_per_img`` (all survivors when ``yolox_style``), then the clamp.

Greedy NMS is sequential; here it runs block by block in score order.  A block
is first suppressed by every box kept in earlier blocks, then resolved inside
by iterating ``keep_i = alive_i and not any(keep_j and IoU_ji > thr, j < i)``
to its fixed point, which is the greedy result (element i is final once every
earlier element is, so at most B iterations; a few in practice).  Blocks stop
once every image has ``max_per_img`` boxes: later candidates cannot enter.
The stand-in's per-box Python loop remains the oracle these tests compare to.

Host synchronisations are few and cheap: one to learn the batch's candidate
count, one per convergence check (the first after 10 steps, then every 6: a
check asks whether one more step changes nothing), one per block only when
there are several blocks.  Constants go to the device from pinned memory
without blocking, and the output is padded to ``min(max_per_img, candidates)``
columns (known without asking the device).
"""
from __future__ import annotations

_BLOCK = 512        # candidates resolved together on the CPU (tests, small memory)
_BLOCK_CUDA = 2048  # on a GPU: fewer blocks, fewer host syncs; (N, 2048, 2048) masks are cheap there


def device_postprocess(boxes, scores, metas, test_cfg, *, rescale: bool = True,
                       block: int | None = None) -> list[tuple]:
    """Same contract as ``host_postprocess``: per image ``(boxes, scores, labels)`` tensors."""
    out_boxes, out_scores, out_labels, counts = batched_postprocess(
        boxes, scores, metas, test_cfg, rescale=rescale, block=block)
    counts = counts.tolist()
    return [(out_boxes[i, :k], out_scores[i, :k], out_labels[i, :k]) for i, k in enumerate(counts)]


def batched_postprocess(boxes, scores, metas, test_cfg, *, rescale: bool = True,
                        block: int | None = None):
    """Padded results ``boxes (N, L, 4), scores (N, L), labels (N, L) int64, counts (N,)``.

    Row i holds image i's detections in its first ``counts[i]`` columns (the
    rest is zero), so one device-to-host copy moves a whole batch.
    """
    import torch

    cfg = dict(test_cfg)
    boxes, scores = torch.as_tensor(boxes).float(), torch.as_tensor(scores).float()
    n, _, c = scores.shape
    dev = boxes.device
    if block is None:
        block = _BLOCK_CUDA if dev.type == "cuda" else _BLOCK
    nms_cfg = dict(cfg["nms"])
    kind = nms_cfg.pop("type", "nms")
    if kind != "nms":
        raise NotImplementedError(f"device postprocessing implements mmcv 'nms' only, not {kind!r}")
    iou_thr = float(nms_cfg.pop("iou_threshold"))
    offset = int(nms_cfg.pop("offset", 0))
    split_thr = int(nms_cfg.pop("split_thr", 10000))

    cand_s, cand_b, cand_l, valid = _select(boxes, scores, cfg)
    kmax = cand_s.shape[1]
    if kmax == 0:
        return _empty(n, dev)
    if rescale:
        cand_b = _to_original(cand_b, metas)
    min_size = cfg.get("min_bbox_size", -1)
    if min_size >= 0:
        valid = valid & ((cand_b[..., 2] - cand_b[..., 0]) > min_size) \
                      & ((cand_b[..., 3] - cand_b[..., 1]) > min_size)
    count = valid.sum(1)
    # mmcv: max over the image's remaining boxes, labels offset by (max + 1)
    max_coord = torch.where(valid[..., None], cand_b, float("-inf")).amax(dim=(1, 2))
    max_coord = torch.where(count > 0, max_coord, 0.0)
    nms_b = cand_b + (cand_l.to(cand_b) * (max_coord[:, None] + 1))[..., None]
    # an image is split per class only at >= split_thr candidates: none can be below that count
    split = (count >= split_thr) if kmax >= split_thr else None
    limit = kmax if cfg.get("yolox_style", False) else int(cfg["max_per_img"])
    keep = _greedy(nms_b, cand_l, valid, split, iou_thr, offset, limit, block)

    kept = keep.sum(1).clamp(max=limit)
    width = min(limit, kmax)  # every image's kept count fits; known without a host sync
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    mask = torch.arange(width, device=dev)[None] < kept[:, None]
    out_b = cand_b.gather(1, order[..., None].expand(-1, -1, 4))
    out_s = cand_s.gather(1, order)
    out_l = cand_l.gather(1, order)
    if rescale:
        hw = _small([[float(m["ori_shape"][1]), float(m["ori_shape"][0])] for m in metas], dev)
        out_b = out_b.clamp(min=0.0).view(n, width, 2, 2)  # host: clamp_(0, size), x and y
        out_b = torch.minimum(out_b, hw[:, None, None, :]).view(n, width, 4)
    out_b = torch.where(mask[..., None], out_b, 0.0)
    out_s = torch.where(mask, out_s, 0.0)
    out_l = torch.where(mask, out_l, 0)
    return out_b, out_s, out_l, kept


def _small(rows, dev, dtype=None):
    """A small constant tensor on ``dev``: through pinned memory, copied without blocking the host."""
    import torch

    host = torch.tensor(rows, dtype=dtype or torch.float32)
    if dev.type != "cuda":
        return host
    return host.pin_memory().to(dev, non_blocking=True)


def _empty(n: int, dev):
    import torch

    return (torch.zeros((n, 0, 4), device=dev), torch.zeros((n, 0), device=dev),
            torch.zeros((n, 0), dtype=torch.long, device=dev),
            torch.zeros((n,), dtype=torch.long, device=dev))


def _select(boxes, scores, cfg: dict):
    """Candidates in visiting order: scores (N, K), boxes (N, K, 4), labels (N, K), valid (N, K)."""
    import torch

    n, _, c = scores.shape
    score_thr, nms_pre = cfg.get("score_thr", -1), cfg.get("nms_pre", 100000)
    if cfg.get("multi_label", True) and c > 1:
        flat, best = scores.reshape(n, -1), None
    else:
        flat, best = scores.max(2)
    ok = flat > score_thr
    nvalid = ok.sum(1)
    # mmdet: num_topk = min(nms_pre, n_valid), then scores[:num_topk] (Python slicing)
    k_img = (nvalid + nms_pre).clamp(min=0) if nms_pre < 0 else nvalid.clamp(max=nms_pre)
    kmax = int(k_img.max()) if n else 0
    masked = torch.where(ok, flat, float("-inf"))
    if kmax < masked.shape[1] // 4:  # a stable top-k: sort only the images' leading part
        vals, idx = _stable_topk(masked, kmax)
    else:
        vals, idx = torch.sort(masked, dim=1, descending=True, stable=True)
        vals, idx = vals[:, :kmax], idx[:, :kmax]
    valid = torch.arange(kmax, device=flat.device)[None] < k_img[:, None]
    if best is None:
        prior, labels = idx // c, idx % c
    else:
        prior, labels = idx, best.gather(1, idx)
    cand_b = boxes.gather(1, prior[..., None].expand(-1, -1, 4))
    return vals, cand_b, labels, valid


def _stable_topk(values, k: int):
    """The first k of a stable descending sort, without sorting every row in full.

    ``topk`` finds each row's k-th largest value v; every entry > v is in,
    entries == v fill the rest in index order — exactly a stable sort's prefix.
    """
    import torch

    if k == 0:
        return values[:, :0], torch.zeros((values.shape[0], 0), dtype=torch.long, device=values.device)
    kth = values.topk(k, dim=1).values[:, -1:]
    above = values > kth
    ties_needed = k - above.sum(1, keepdim=True)
    tie = values == kth
    tie_rank = tie.cumsum(1)
    chosen = above | (tie & (tie_rank <= ties_needed))
    # chosen has exactly k entries per row; keep index order, then stable-sort by value
    idx = torch.sort((~chosen).to(torch.uint8), dim=1, stable=True).indices[:, :k]
    vals = values.gather(1, idx)
    vals, pos = torch.sort(vals, dim=1, descending=True, stable=True)
    return vals, idx.gather(1, pos)


def _to_original(boxes, metas: list[dict]):
    """Undo the letterbox per image, with the same float32 operations as the host path."""
    import torch

    pads, scales, has_pad = [], [], []
    for meta in metas:
        pad = meta.get("pad_param")
        has_pad.append(pad is not None)
        pads.append([float(pad[2]), float(pad[0]), float(pad[2]), float(pad[0])] if pad is not None
                    else [0.0] * 4)
        sf = [float(v) for v in meta["scale_factor"]]
        scales.append(sf * 2)
    pads, scales = _small(pads, boxes.device), _small(scales, boxes.device)
    if any(has_pad):
        boxes = boxes - pads[:, None, :]  # x - 0.0 == x: unpadded images are unchanged
    return boxes / scales[:, None, :]


def _iou(a, area_a, b, area_b, offset: int):
    """(N, I, J) IoU, term for term the stand-in's ``_iou`` (bit-identical results)."""
    import torch

    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[:, :, None, 2:4], b[:, None, :, 2:4])
    wh = (rb - lt + offset).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, :, None] + area_b[:, None, :] - inter)


def _greedy(nms_b, labels, valid, split, iou_thr: float, offset: int, limit: int, block: int):
    """(N, K) keep mask of greedy NMS in candidate order, exact until ``limit`` boxes per image.

    ``split`` is None when no image has ``split_thr`` candidates (then classes interact only
    through mmcv's coordinate offset), else the (N,) per-class flag.
    """
    import torch

    n, kmax = valid.shape
    dev = nms_b.device
    area = (nms_b[..., 2] - nms_b[..., 0] + offset) * (nms_b[..., 3] - nms_b[..., 1] + offset)
    if kmax <= block:  # one block: no earlier boxes, nothing to carry over
        return _resolve(nms_b, area, labels, valid, split, iou_thr, offset)
    keep = torch.zeros_like(valid)
    kept_b = nms_b.new_zeros((n, 0, 4))
    kept_a = area.new_zeros((n, 0))
    kept_l = labels.new_zeros((n, 0))
    kept_v = valid.new_zeros((n, 0))
    kept_n = torch.zeros(n, dtype=torch.long, device=dev)
    for start in range(0, kmax, block):
        stop = min(start + block, kmax)
        bb, ba, bl = nms_b[:, start:stop], area[:, start:stop], labels[:, start:stop]
        alive = valid[:, start:stop] & (kept_n < limit)[:, None]
        if kept_b.shape[1]:
            hit = (_iou(bb, ba, kept_b, kept_a, offset) > iou_thr) & kept_v[:, None, :]
            if split is not None:
                hit &= ~split[:, None, None] | (bl[:, :, None] == kept_l[:, None, :])
            alive &= ~hit.any(2)
        cur = _resolve(bb, ba, bl, alive, split, iou_thr, offset)
        keep[:, start:stop] = cur
        counts = cur.sum(1)
        kept_n = kept_n + counts
        if stop == kmax:
            break
        m, more = torch.stack([counts.max(), (kept_n < limit).any().long()]).tolist()  # one sync
        if m:  # append this block's kept boxes, compacted to the front of each row
            idx = torch.sort((~cur).to(torch.uint8), dim=1, stable=True).indices[:, :m]
            kept_b = torch.cat([kept_b, bb.gather(1, idx[..., None].expand(-1, -1, 4))], 1)
            kept_a = torch.cat([kept_a, ba.gather(1, idx)], 1)
            kept_l = torch.cat([kept_l, bl.gather(1, idx)], 1)
            kept_v = torch.cat([kept_v, torch.arange(m, device=dev)[None] < counts[:, None]], 1)
        if not more:
            break
    return keep


_FIRST_CHECK, _CHECK_EVERY = 10, 6


def _resolve(bb, ba, bl, alive, split, iou_thr: float, offset: int):
    """Greedy NMS inside one block of candidates (already suppressed by earlier blocks).

    ``keep_i = alive_i and not any(keep_j and IoU_ji > thr, j < i)`` iterated from
    ``keep = alive`` to its fixed point, which is unique and is the greedy result
    (by induction over i: element i is final once every earlier one is, so at most
    ``size`` steps; the chain of suppressions is short in practice).  A check asks
    whether one more step changes nothing: then this is the fixed point.
    """
    import torch

    size = bb.shape[1]
    if size == 0:
        return alive
    inner = _iou(bb, ba, bb, ba, offset) > iou_thr  # [i, j]: earlier i suppresses later j
    ar = torch.arange(size, device=bb.device)
    inner &= ar[:, None] < ar[None, :]
    if split is not None:
        inner &= ~split[:, None, None] | (bl[:, :, None] == bl[:, None, :])
    cur, steps, done = alive, _FIRST_CHECK, 0
    while True:  # cur stays within alive, so rows of suppressed boxes need no masking
        for _ in range(steps - 1):
            cur = torch.gt(alive, (inner & cur[:, :, None]).any(1))
        nxt = torch.gt(alive, (inner & cur[:, :, None]).any(1))
        done += steps
        if done > size or torch.equal(nxt, cur):  # past `size` steps it is final anyway
            return nxt
        cur, steps = nxt, _CHECK_EVERY
