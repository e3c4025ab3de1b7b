"""The streaming accuracy pass: same tensors as the one-shot preprocessing, bounded memory, the input cache."""
from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, has_module

pytestmark = pytest.mark.skipif(not has_module("mmyolo"), reason="needs the mmyolo stack (extra mmyolo)")

torch = pytest.importorskip("torch")

FIXTURE = ROOT / "fixtures" / "yolov8_synth"


def _pre(name_or_path, imgsz=320):
    from harness.models.mmyolo_build import load_config, prepare_mm
    from harness.models.preprocess import Preprocessor
    from harness.models.table import packaged_config

    prepare_mm()
    path = Path(name_or_path) if str(name_or_path).endswith(".py") else packaged_config(name_or_path)
    return Preprocessor(load_config(path, imgsz))


def _assert_same(a, b):
    assert torch.equal(a.inputs, b.inputs)
    assert a.image_ids == b.image_ids
    assert len(a.metas) == len(b.metas)
    for ma, mb in zip(a.metas, b.metas):
        assert ma.keys() == mb.keys()
        for k in ma:
            assert np.array_equal(np.asarray(ma[k]), np.asarray(mb[k])), k


@pytest.mark.parametrize("config", [str(FIXTURE / "config.py"), "yolox_tiny", "ppyoloe_plus_s"],
                         ids=["letterbox", "yolox_resize_pad", "ppyoloe_fixed"])
def test_split_preprocessing_equals_one_shot(config):
    """prepare_one (workers) + collate (device step) == Preprocessor.__call__, bit for bit."""
    pre = _pre(config)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
              [(240, 320, 3), (333, 201, 3), (320, 320, 3), (100, 517, 3)]]
    ids = [5, 6, 7, 8]
    expected = pre(images, ids)
    parts = [pre.prepare_one(img, i) for img, i in zip(images, ids)]
    stacked = torch.from_numpy(np.stack([p[0] for p in parts]))
    _assert_same(pre.collate(stacked, [p[1] for p in parts], ids), expected)
    _assert_same(pre.collate([torch.from_numpy(p[0]) for p in parts], [p[1] for p in parts], ids),
                 expected)


@pytest.mark.parametrize("config", [str(FIXTURE / "config.py"), "yolox_tiny", "ppyoloe_plus_s", "rtmdet_tiny"],
                         ids=["letterbox", "yolox_resize_pad", "ppyoloe_fixed", "rtmdet_mean_std"])
def test_tensor_collate_equals_mmdet_data_preprocessor(config):
    """The consumer thread's collate (no DetDataSample per image) == mmdet's own data
    preprocessor on the same stacked batch, bit for bit; it is taken wherever the model's
    preprocessor class allows it (the families detbench's matrices use most)."""
    from harness.models.preprocess import _tensor_collatable

    pre = _pre(config)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (333, 201, 3), dtype=np.uint8) for _ in range(3)]
    parts = [pre.prepare_one(img, i) for i, img in enumerate(images)]
    stacked = torch.from_numpy(np.stack([p[0] for p in parts]))
    metas = [p[1] for p in parts]
    reference = pre._collate_mm(stacked, metas, [0, 1, 2])
    fast = pre._collate_tensor(stacked, metas)
    if type(pre.data_preprocessor) in _tensor_collatable():
        assert fast is not None
        _assert_same(pre.collate(stacked, metas, [0, 1, 2]), reference)
        odd = torch.nn.functional.pad(stacked, (0, 5, 0, 3))  # not a multiple of any divisor
        _assert_same(pre.collate(odd, metas, [0, 1, 2]), pre._collate_mm(odd, metas, [0, 1, 2]))
    else:
        assert fast is None  # another preprocessor class: mmdet's own path
    assert any(type(_pre(c).data_preprocessor) in _tensor_collatable()
               for c in (str(FIXTURE / "config.py"), "rtmdet_tiny"))


def _dataset(images_dir, ann):
    from harness.data.coco import CocoDataset

    return CocoDataset.load(images_dir, ann)


def test_stream_equals_today_and_cache_round_trips(synth_val, tmp_path):
    from harness.data.input_cache import InputCache, cache_key, dataset_hash
    from harness.models.stream import BatchStream

    ds = _dataset(*synth_val)
    pre = _pre(FIXTURE / "config.py")
    key = cache_key(dataset_hash(ds.ann_file, [im.path for im in ds.images]), pre.pipeline_hash(), 320)
    cache = InputCache(tmp_path, key)
    assert not cache.complete
    expected = [pre([ds.read(im) for im in ds.images[s:s + 4]], [im.id for im in ds.images[s:s + 4]])
                for s in range(0, len(ds.images), 4)]
    for attempt, status in enumerate(("miss", "hit")):
        stream = BatchStream(ds, pre, 4, "cpu", workers=3, prefetch=1, cache=cache)
        got = list(stream)
        assert stream.stats["cache"] == status
        assert len(got) == len(expected) == 2  # 6 images: a full and a partial batch
        for g, e in zip(got, expected):
            _assert_same(g, e)
        assert cache.complete
    other = cache_key(dataset_hash(ds.ann_file, [im.path for im in ds.images]), pre.pipeline_hash(), 640)
    assert other != key  # another size is another entry


def test_corrupt_image_names_the_file(synth_val, tmp_path):
    from harness.errors import UserError
    from harness.models.stream import BatchStream

    images_dir, ann = synth_val
    copy = tmp_path / "images"
    shutil.copytree(images_dir, copy)
    ds = _dataset(copy, ann)
    bad = ds.images[4].path
    bad.write_bytes(b"not a jpeg at all")
    stream = BatchStream(ds, _pre(FIXTURE / "config.py"), 2, "cpu", workers=2, prefetch=1)
    with pytest.raises(UserError, match=bad.name):
        list(stream)
    alive = [t.name for t in threading.enumerate() if t.name.startswith("detbench-")]
    assert not alive  # feeder and decode pool are gone: nothing hangs


@dataclass(frozen=True)
class _Img:
    id: int


class _CountingDataset:
    """Fake images; counts how many were decoded and not yet handed to the consumer."""

    def __init__(self, n):
        self.images = tuple(_Img(i) for i in range(n))
        self.lock = threading.Lock()
        self.decoded = 0

    def read(self, image):
        with self.lock:
            self.decoded += 1
        return np.full((8, 8, 3), image.id % 256, dtype=np.uint8)


class _FakePre:
    def prepare_one(self, img, image_id):
        return np.ascontiguousarray(img.transpose(2, 0, 1)), {"img_id": image_id}

    def collate(self, inputs, metas, ids):
        from harness.models.preprocess import Prepared

        return Prepared(inputs.float() if hasattr(inputs, "float") else inputs, metas, list(ids))


def test_memory_is_bounded_by_the_prefetch_depth():
    """However slow the consumer, at most prefetch + 2 batches (batch >= workers) are decoded ahead of it."""
    from harness.models.stream import BatchStream

    ds, batch, prefetch = _CountingDataset(400), 8, 2
    consumed, worst = 0, 0
    for prepared in BatchStream(ds, _FakePre(), batch, "cpu", workers=4, prefetch=prefetch):
        threading.Event().wait(0.002)  # a slow device
        consumed += len(prepared.image_ids)
        worst = max(worst, ds.decoded - consumed)
        assert prepared.inputs[:, 0, 0, 0].tolist() == [float(i % 256) for i in prepared.image_ids]
    assert consumed == 400
    assert worst <= batch * (prefetch + 2)


def test_consumer_error_stops_the_feeder():
    from harness.models.stream import BatchStream

    ds = _CountingDataset(1000)
    with pytest.raises(RuntimeError, match="device failed"):
        for _ in BatchStream(ds, _FakePre(), 4, "cpu", workers=2, prefetch=1):
            raise RuntimeError("device failed")
    assert ds.decoded < 100
    assert not [t for t in threading.enumerate() if t.name.startswith("detbench-")]


def test_dataset_hash_memo_rehashes_only_changed_files(synth_val, tmp_path, monkeypatch):
    import os

    from harness.data import input_cache
    from harness.measure import provenance

    images_dir, ann = synth_val
    copy = tmp_path / "images"
    shutil.copytree(images_dir, copy)
    paths = sorted(copy.iterdir())
    plain = input_cache.dataset_hash(ann, paths)
    assert input_cache.dataset_hash(ann, paths, memo_dir=tmp_path / "memo") == plain  # fills the memo
    calls = []
    real = provenance.file_hash
    monkeypatch.setattr(provenance, "file_hash", lambda p, *a: calls.append(Path(p).name) or real(p, *a))
    assert input_cache.dataset_hash(ann, paths, memo_dir=tmp_path / "memo") == plain
    assert calls == [ann.name]  # only the annotations file is read again
    paths[2].write_bytes(paths[2].read_bytes() + b"x")  # content changes: size and mtime change
    os.utime(paths[3], ns=(1, 1))  # same bytes, other mtime: re-hashed, same digest
    calls.clear()
    changed = input_cache.dataset_hash(ann, paths, memo_dir=tmp_path / "memo")
    assert sorted(calls) == sorted([paths[2].name, paths[3].name, ann.name]) and changed != plain


def test_peek_looks_ahead_without_changing_the_sequence():
    """``peek`` collates the next batch early; iteration then yields that same batch, in order."""
    from harness.models.stream import BatchStream

    ds = _CountingDataset(37)
    plain = [p.image_ids for p in BatchStream(ds, _FakePre(), 8, "cpu", workers=2, prefetch=1)]
    seen, peeked = [], []
    stream = BatchStream(_CountingDataset(37), _FakePre(), 8, "cpu", workers=2, prefetch=1)
    previous = None
    for prepared in stream:
        if previous is not None:
            assert previous.peek() is None  # only the batch being processed looks ahead
            assert prepared is peeked[-1]  # the batch peeked is the batch yielded next
        nxt = prepared.peek()
        assert nxt is prepared.peek()  # asking twice takes nothing more from the stream
        peeked.append(nxt)
        seen.append(prepared.image_ids)
        previous = prepared
    assert seen == plain and len(seen) == 5
    assert peeked[-1] is None  # at the end there is nothing ahead


def test_failure_met_by_peek_is_raised_there():
    from harness.models.stream import BatchStream

    class Failing(_CountingDataset):
        def read(self, image):
            if image.id == 9:
                raise RuntimeError("broken image 9")
            return super().read(image)

    stream = BatchStream(Failing(20), _FakePre(), 8, "cpu", workers=2, prefetch=1)
    batches = iter(stream)
    first = next(batches)
    assert first.image_ids == list(range(8))
    with pytest.raises(RuntimeError, match="broken image 9"):
        first.peek()
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("detbench-")]


def test_long_lived_objects_are_frozen_for_the_pass_only():
    """gc.freeze while the pass runs (cheap collections), unfrozen after it, even on an error."""
    import gc

    from harness.models.stream import BatchStream

    gc.unfreeze()  # a clean start (the lent GPU machine's Python starts with objects frozen)
    assert gc.get_freeze_count() == 0
    stream = BatchStream(_CountingDataset(20), _FakePre(), 8, "cpu", workers=2, prefetch=1)
    counts = [gc.get_freeze_count() for _ in stream]
    assert len(counts) == 3 and min(counts) > 0 and stream.stats["gc_frozen"] is True
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError, match="device failed"):
        for _ in BatchStream(_CountingDataset(20), _FakePre(), 8, "cpu", workers=2, prefetch=1):
            raise RuntimeError("device failed")
    assert gc.get_freeze_count() == 0


def test_the_pass_freezes_even_when_something_froze_objects_before():
    """The lent H200's Python starts with a few hundred objects frozen: the pass ran there with
    full collections (``gc_frozen: False``).  It now freezes anyway and, not being the first
    freezer, leaves the permanent generation as it found it or larger, never thawed."""
    import gc

    from harness.models.stream import BatchStream

    gc.unfreeze()
    gc.freeze()  # someone else's freeze, before the pass
    try:
        before = gc.get_freeze_count()
        keep = [[i] for i in range(5000)]  # tracked objects created after that freeze
        stream = BatchStream(_CountingDataset(20), _FakePre(), 8, "cpu", workers=2, prefetch=1)
        counts = [gc.get_freeze_count() for _ in stream]
        assert stream.stats["gc_frozen"] is True
        assert min(counts) >= before + len(keep)  # this pass froze the newer objects too
        assert gc.get_freeze_count() >= before  # and did not thaw the earlier owner's objects
    finally:
        gc.unfreeze()
