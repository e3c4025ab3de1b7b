"""The PyTorch runner's overlapped CUDA pass gives exactly the detections of the plain path.

On CUDA, ``PyTorchRunner.infer`` queues the next batch's model (``Prepared.peek``)
before finishing the current one, runs NMS on a side stream and copies the
results to pinned memory in one go.  Detections must equal, array for array,
(a) the same runner without look-ahead and (b) the host postprocessing
(mmdet/mmcv helpers, the oracle) of the same decoded tensors.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ROOT, has_module

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not has_module("mmyolo"), reason="needs the mmyolo stack (extra mmyolo)"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

FIXTURE = ROOT / "fixtures" / "yolov8_synth"


def _ctx(tmp_path, images, ann, batch):
    from harness import matrix as mx
    from harness.runner.context import CellContext

    m = mx.parse({"name": "overlap",
                  "models": [{"name": "yolov8_synth", "config": str(FIXTURE / "config.py"),
                              "checkpoint": str(FIXTURE / "yolov8_synth.pth")}],
                  "backends": ["pytorch"], "precisions": ["fp32"], "batch_sizes": [batch],
                  "image_sizes": [320], "devices": ["cuda"],
                  "dataset": {"images": str(images), "annotations": str(ann)}})
    cell = mx.expand(m)[0]
    cell["dataset"] = {"images": str(images), "annotations": str(ann), "limit": None}
    cell["cache_dir"] = str(tmp_path / "cache")
    work = tmp_path / "work"
    work.mkdir()
    return cell, CellContext(cell, work, tmp_path / "cache")


def test_overlapped_pass_equals_plain_and_host(tmp_path):
    from harness.backends.pytorch import PyTorchRunner
    from harness.data.synth import generate
    from harness.export.host_nms import host_postprocess
    from harness.models.stream import BatchStream

    ann = generate(tmp_path / "data", images=23, seed=9, size=320)  # 5 full batches of 4 and 3
    cell, ctx = _ctx(tmp_path, tmp_path / "data" / "images", ann, batch=4)
    runner = PyTorchRunner(cell, ctx)
    runner.load()
    assert runner.info.facts["warmup_s"] > 0  # model + NMS ran at load, at 4 and at 3 images
    pre = ctx.preprocessor("cuda")
    overlapped, plain, host, ids, jobs = [], [], [], [], []
    for prepared in BatchStream(ctx.dataset, pre, 4, "cuda", workers=2, prefetch=2):
        queued = runner._ahead is not None and runner._ahead[0] is prepared
        overlapped.extend(runner.infer(prepared))  # peeks: the next batch is queued first
        ids.extend(prepared.image_ids)
        jobs.append(queued)
        boxes, scores = runner.forward(prepared.inputs)  # the plain path: no look-ahead
        plain.extend(runner.postprocess((boxes, scores), prepared.metas))
        host.extend(host_postprocess(boxes.cpu(), scores.cpu(), prepared.metas, runner.test_cfg))
    assert ids == [im.id for im in ctx.dataset.images]
    assert jobs == [False] + [True] * 5  # every batch after the first was queued ahead
    assert runner._pool is not None  # the NMS of a batch with a look-ahead ran on the helper thread
    assert sum(len(d.scores) for d in overlapped) > 0
    for a, b, (hb, hs, hl) in zip(overlapped, plain, host):
        for x, y in ((a.boxes, b.boxes), (a.scores, b.scores), (a.labels, b.labels)):
            assert np.array_equal(x, y)
        assert np.array_equal(a.boxes, hb.numpy()) and np.array_equal(a.scores, hs.numpy())
        assert np.array_equal(a.labels, hl.numpy())
    runner.close()
    assert runner._pool is None
