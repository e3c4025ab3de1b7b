"""The plain-torch mmcv._ext stand-in against known NMS results."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the nms stand-in is torch code")

from harness.compat import mmcv_ext  # noqa: E402


def greedy_reference(boxes, scores, thr, offset=0):
    """The textbook loop, written independently, as the oracle."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))  # sorted() is stable
    keep, removed = [], set()
    for pos, i in enumerate(order):
        if i in removed:
            continue
        keep.append(i)
        for j in order[pos + 1:]:
            a, b = boxes[i].tolist(), boxes[j].tolist()
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + offset)
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + offset)
            inter = iw * ih
            area = lambda r: (r[2] - r[0] + offset) * (r[3] - r[1] + offset)
            if inter / (area(a) + area(b) - inter) > thr:
                removed.add(j)
    return keep


def test_known_small_case():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # box 3 (0.95) suppresses the identical box 0 and the overlapping box 1 (IoU 0.68)
    assert mmcv_ext.nms(boxes, scores, 0.5).tolist() == [3, 2]


def test_ties_keep_input_order():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10.]])
    scores = torch.tensor([0.5, 0.5, 0.5])
    assert mmcv_ext.nms(boxes, scores, 0.5).tolist() == [0]
    disjoint = torch.tensor([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10.]])
    assert mmcv_ext.nms(disjoint, scores, 0.5).tolist() == [0, 1, 2]


def test_iou_equal_to_threshold_is_kept():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5.]])  # IoU exactly 0.5
    assert mmcv_ext.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]


def test_empty_input():
    out = mmcv_ext.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert out.shape == (0,) and out.dtype == torch.long


@pytest.mark.parametrize("n, offset", [(700, 0), (300, 1)])  # spans several blocks
def test_matches_reference_on_random_boxes(n, offset):
    g = torch.Generator().manual_seed(n)
    xy = torch.rand(n, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60 + 1], 1)
    scores = (torch.rand(n, generator=g) * 20).round() / 20  # many ties
    assert mmcv_ext.nms(boxes, scores, 0.5, offset).tolist() == greedy_reference(boxes, scores, 0.5, offset)


def test_batched_nms_through_mmcv_separates_classes():
    mmcv_ext.install()
    from mmcv.ops import batched_nms

    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10.], [0, 0, 10, 10.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0]), dict(type="nms", iou_threshold=0.5))
    assert keep.tolist() == [0, 1]
    assert dets.shape == (2, 5)


def test_other_compiled_ops_fail_loudly_naming_the_op():
    mmcv_ext.install()
    import mmcv._ext as ext

    with pytest.raises(NotImplementedError, match="roi_align_forward"):
        ext.roi_align_forward()
