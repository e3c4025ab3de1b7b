"""The PyTorch runner's overlapped CUDA pass hands a batch's NMS to one helper thread while the
calling thread queues the next batch's model.  The threading itself, without a GPU: the order of
the calls, the results per batch, errors raised where the caller asked, and the thread's end."""
from __future__ import annotations

import threading
import types

import pytest

from harness.backends.pytorch import PyTorchRunner


class _Recorder(PyTorchRunner):
    def __init__(self, fail_on=None):  # no model: _launch / _finish are stand-ins
        self._cuda, self._ahead, self._pool = True, None, None
        self.calls, self.fail_on = [], fail_on
        self.model = self.head = self._deploy = None

    def _launch(self, inputs, metas):
        self.calls.append(("launch", inputs, threading.current_thread().name))
        return inputs

    def _finish(self, job):
        self.calls.append(("finish", job, threading.current_thread().name))
        if job == self.fail_on:
            raise RuntimeError(f"NMS failed on batch {job}")
        return [f"detections of {job}"]


def _batches(n):
    out = [types.SimpleNamespace(inputs=i, metas=[]) for i in range(n)]
    for i, b in enumerate(out):
        b.peek = (lambda i=i: out[i + 1] if i + 1 < n else None)
    return out


def test_nms_runs_on_the_helper_thread_while_the_next_model_is_queued():
    runner = _Recorder()
    got = []
    for b in _batches(3):
        got.append(runner.infer(b))
        runner.calls.append(("returned", b.inputs, None))
    assert got == [["detections of 0"], ["detections of 1"], ["detections of 2"]]
    main = threading.current_thread().name
    order = [(c[0], c[1]) for c in runner.calls]
    assert [c for c in order if c[0] == "launch"] == [("launch", 0), ("launch", 1), ("launch", 2)]
    assert [c for c in order if c[0] == "finish"] == [("finish", 0), ("finish", 1), ("finish", 2)]
    for i in (0, 1):  # batch i's results come back only after batch i+1's model was queued
        assert order.index(("launch", i + 1)) < order.index(("returned", i))
        assert order.index(("finish", i)) < order.index(("returned", i))
    threads = {(c[0], c[1]): c[2] for c in runner.calls}
    assert threads[("launch", 0)] == threads[("launch", 1)] == threads[("launch", 2)] == main
    assert threads[("finish", 0)].startswith("detbench-nms") and threads[("finish", 1)].startswith("detbench-nms")
    assert threads[("finish", 2)] == main  # the last batch has nothing to overlap with
    runner.close()
    assert runner._pool is None
    assert not [t for t in threading.enumerate() if t.name.startswith("detbench-nms")]


def test_an_error_in_the_helper_thread_is_raised_by_infer_and_the_next_model_was_queued():
    runner = _Recorder(fail_on=1)
    batches = _batches(3)
    runner.infer(batches[0])
    with pytest.raises(RuntimeError, match="NMS failed on batch 1"):
        runner.infer(batches[1])
    assert runner._ahead is not None and runner._ahead[0] is batches[2]
    runner.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("detbench-nms")]
