"""Batched device postprocessing == the host path (mmdet/mmcv helpers + the stand-in's NMS loop).

Every comparison is exact (torch.equal): the device path must pick the same
candidates in the same order with the same float arithmetic.  The host path,
whose NMS is the plain-torch loop of harness.compat.mmcv_ext, is the oracle.
"""
from __future__ import annotations

import pytest

from tests.conftest import has_module

pytestmark = pytest.mark.skipif(not has_module("mmyolo"), reason="needs the mmyolo stack (extra mmyolo)")

torch = pytest.importorskip("torch")


def _host(boxes, scores, metas, cfg, rescale=True):
    from harness.export.host_nms import host_postprocess
    from harness.models.mmyolo_build import prepare_mm

    prepare_mm()
    return host_postprocess(boxes, scores, metas, cfg, rescale=rescale)


def _device(boxes, scores, metas, cfg, rescale=True, block=64):
    from harness.export.device_nms import device_postprocess

    return device_postprocess(boxes, scores, metas, cfg, rescale=rescale, block=block)


def _cfg(**kw):
    cfg = dict(multi_label=True, score_thr=0.05, nms_pre=1000, max_per_img=100,
               nms=dict(type="nms", iou_threshold=0.6))
    cfg.update(kw)
    return cfg


def _metas(n, pads=True):
    out = []
    for i in range(n):
        m = {"ori_shape": (200 + 37 * i, 300 - 23 * i), "scale_factor": (0.8 + 0.05 * i, 0.8 + 0.05 * i)}
        if pads:
            m["pad_param"] = [3.0 * i, 3.0 * i, 5.0 + i, 5.0 + i]
        out.append(m)
    return out


def _random(n=3, a=400, c=5, seed=0, size=256.0, quant=None):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, a, 2, generator=gen) * size
    wh = torch.rand(n, a, 2, generator=gen) * size / 4 + 1
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)  # some coordinates negative
    scores = torch.rand(n, a, c, generator=gen)
    if quant:
        scores = (scores * quant).round() / quant  # many exact ties
    return boxes, scores


def _assert_equal(got, expected):
    assert len(got) == len(expected)
    for (gb, gs, gl), (eb, es, el) in zip(got, expected):
        assert len(gb) == len(eb)
        assert torch.equal(gl.long().cpu(), el.long().cpu())
        assert torch.equal(gs.cpu(), es.cpu())
        assert torch.equal(gb.cpu(), eb.cpu())


@pytest.mark.parametrize("cfg", [
    _cfg(),
    _cfg(multi_label=False),
    _cfg(nms_pre=50, max_per_img=20),
    _cfg(nms_pre=-1),                       # mmdet's slice semantics: drops the last candidate
    _cfg(yolox_style=True, max_per_img=5),  # keeps every survivor
    _cfg(min_bbox_size=30.0),
    _cfg(score_thr=-1, nms=dict(type="nms", iou_threshold=0.45, offset=1)),
], ids=["multi_label", "single_label", "pre_topk_cut", "neg_nms_pre", "yolox_style", "min_size",
        "offset1"])
def test_random_batches_equal_host(cfg):
    boxes, scores = _random()
    metas = _metas(3)
    _assert_equal(_device(boxes, scores, metas, cfg), _host(boxes, scores, metas, cfg))
    _assert_equal(_device(boxes, scores, metas, cfg, rescale=False),
                  _host(boxes, scores, metas, cfg, rescale=False))


def test_ties_equal_host():
    """Quantised scores (hundreds of exact ties, cut by nms_pre inside a tie group) and duplicate boxes."""
    boxes, scores = _random(a=300, c=4, seed=1, quant=8)
    boxes[:, 100:200] = boxes[:, :100]  # identical boxes with tied scores
    cfg = _cfg(score_thr=0.2, nms_pre=333, max_per_img=60)
    got, exp = _device(boxes, scores, _metas(3), cfg), _host(boxes, scores, _metas(3), cfg)
    _assert_equal(got, exp)
    assert all(len(e[0]) == 60 for e in exp)


def test_iou_exactly_at_threshold_is_kept():
    """IoU == threshold keeps the box (mmcv suppresses only when IoU > thr); a hair above suppresses."""
    boxes = torch.tensor([[[0, 0, 2, 1], [0, 0, 1, 1], [10, 10, 12, 11], [10, 10, 11.0001, 11]]])
    scores = torch.tensor([[[0.9], [0.8], [0.7], [0.6]]])
    cfg = _cfg(score_thr=0.0, nms=dict(type="nms", iou_threshold=0.5))
    metas = [{"ori_shape": (100, 100), "scale_factor": (1.0, 1.0)}]
    got, exp = _device(boxes, scores, metas, cfg), _host(boxes, scores, metas, cfg)
    _assert_equal(got, exp)
    assert got[0][1].tolist() == pytest.approx([0.9, 0.8, 0.7])  # IoU 0.5 kept, 0.50005 suppressed


def test_empty_images():
    boxes, scores = _random(n=4, seed=2)
    scores[1] = 0.0  # image 1: nothing passes the threshold
    scores[3] = 0.0
    cfg = _cfg(score_thr=0.01)
    got = _device(boxes, scores, _metas(4), cfg)
    _assert_equal(got, _host(boxes, scores, _metas(4), cfg))
    assert len(got[1][0]) == 0 and len(got[3][0]) == 0 and len(got[0][0]) > 0
    nothing = _device(boxes, scores, _metas(4), _cfg(score_thr=1.0))
    assert [len(b) for b, _, _ in nothing] == [0, 0, 0, 0]


@pytest.mark.parametrize("candidates,c", [(30000, 10), (9999, 3)], ids=["30000_split", "9999_offset"])
def test_many_candidates(candidates, c):
    """30,000 candidates: mmcv's per-class branch (>= split_thr); 9,999: the offset branch."""
    a = candidates // c
    boxes, scores = _random(n=2, a=a, c=c, seed=3, size=640.0)
    scores[1, :, :] *= 0.5  # image 1 has fewer candidates above the threshold
    cfg = _cfg(score_thr=0.0, nms_pre=30000, max_per_img=300, nms=dict(type="nms", iou_threshold=0.7))
    got, exp = _device(boxes, scores, _metas(2), cfg, block=512), _host(boxes, scores, _metas(2), cfg)
    _assert_equal(got, exp)
    assert len(exp[0][0]) == 300


def test_fixture_decode_equals_host():
    """The trained fixture's own decoded tensors on synthetic images, with its test_cfg."""
    from harness.data.synth import generate
    from harness.export.deploy import DeployModel
    from harness.models.mmyolo_build import build_model, load_config, prepare_mm
    from harness.models.preprocess import Preprocessor
    from tests.conftest import ROOT
    import cv2
    import tempfile
    from pathlib import Path

    prepare_mm()
    fixture = ROOT / "fixtures" / "yolov8_synth"
    cfg = load_config(fixture / "config.py", 320)
    model = build_model(cfg, str(fixture / "yolov8_synth.pth"))
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), images=4, seed=5, size=320)
        images = [cv2.imread(str(p)) for p in sorted((Path(tmp) / "images").iterdir())]
    prep = Preprocessor(cfg)(images, list(range(4)))
    with torch.no_grad():
        boxes, scores = DeployModel(model).eval()(prep.inputs)
    test_cfg = model.bbox_head.test_cfg
    exp = _host(boxes, scores, prep.metas, test_cfg)
    _assert_equal(_device(boxes, scores, prep.metas, test_cfg, block=512), exp)
    assert sum(len(e[0]) for e in exp) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_cuda_equals_host():
    boxes, scores = _random(n=4, a=3000, c=10, seed=4, size=640.0, quant=64)
    for cfg in (_cfg(score_thr=0.0, nms_pre=30000, max_per_img=300), _cfg(multi_label=False)):
        got = _device(boxes.cuda(), scores.cuda(), _metas(4), cfg, block=512)
        _assert_equal(got, _host(boxes, scores, _metas(4), cfg))
