"""The streaming accuracy pass's input side: decode + test pipeline in workers, bounded prefetch.

A feeder thread keeps at most ``prefetch`` batches ready ahead of the device;
decode-and-pipeline jobs run in a thread pool (cv2's decode and resize release
the GIL), at most ``max(2 batches, 2 per worker)`` images in flight, so a
5,000-image dataset is never resident at once.  Each batch is stacked into a
reused pinned host buffer and copied to the device without blocking, so the
copy and the next batches' decoding overlap the model.  With an
:class:`~harness.data.input_cache.InputCache` the pipeline output is written
once and later cells of the same size read it back instead of decoding.

The batch step is ``Preprocessor.collate`` (the model's data preprocessor on
the device): the tensors are exactly those of ``Preprocessor.__call__``
(tests/test_stream.py).  Each yielded batch carries ``peek``: it collates the
next batch ahead (the one the iteration yields next), so a runner can queue the
next batch's device work before it finishes this one (the PyTorch runner does).  A corrupt image fails the pass with the file named
(UserError); an error anywhere stops the feeder and its pool, nothing hangs.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

_END = object()


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_MMAP_THRESHOLD = 256 * 1024


def _return_large_blocks_to_the_os() -> bool:
    """glibc: serve allocations >= 256 KiB with mmap, so freed image buffers leave the process.

    By default glibc raises this threshold each time such a block is freed (up to 32 MiB);
    decoded images (~1 MiB each, from 16 threads) then come from per-thread arenas, which
    keep freed memory: a cold 320-image pass at 640 px with 16 decode threads peaked ~140 MB
    higher without this (measured on a CPU machine).  Fixing the threshold turns that growth
    off.  Process-wide; False where there is no glibc.
    """
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def _freeze_long_lived() -> tuple[bool, bool]:
    """Exempt every object that exists now from the cyclic GC while the pass runs (``gc.freeze``).

    The worker holds several hundred thousand long-lived objects (torch, mm* modules, the
    model); the pass allocates hundreds of thousands more (one COCO entry per detection),
    which triggers full collections that walk them all.  In a process with torch and the
    mm* stack imported, building 220,000 COCO entries took 6.2 s with the GC as is and 2.7 s
    with those objects frozen (the same as with the GC off; CPU machine).

    Returns ``(frozen, unfreeze_after)``.  Nothing is done when the GC is off.  When
    nothing was frozen before, ``gc.unfreeze`` at the end puts everything back.  When
    something else froze objects already (the lent GPU machine's Python starts with a
    few hundred frozen: its pass then ran with full collections), the pass still freezes,
    and leaves the permanent generation as it is afterwards: ``gc.unfreeze`` cannot give
    back only this pass's objects, and thawing the others would undo their owner's choice.
    """
    import gc

    if not gc.isenabled():
        return False, False
    before = gc.get_freeze_count()
    gc.freeze()
    return True, before == 0


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores))


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class BatchStream:
    """Iterate ``Prepared`` batches (inputs on ``device``) over a dataset's images, in order.

    ``stats`` after iteration: seconds spent waiting for input on the consumer
    side (``wait_s``), in decode+pipeline jobs summed over workers
    (``decode_s``), and whether the input cache was hit (``cache``).
    """

    def __init__(self, dataset, pre, batch: int, device: str, *, workers: int | None = None,
                 prefetch: int = 3, cache=None, limit: int | None = None):
        self.dataset, self.pre, self.batch, self.device = dataset, pre, int(batch), device
        self.workers = workers or default_workers()
        self.prefetch = max(1, int(prefetch))
        self.cache = cache
        self.images = list(dataset.images[:limit] if limit else dataset.images)
        self.stats = {"wait_s": 0.0, "decode_s": 0.0, "collate_s": 0.0,
                      "cache": "off" if cache is None else "miss",
                      "workers": self.workers, "images": len(self.images)}
        self._pinned = device.startswith("cuda")

    # ---------------------------------------------------------------- consumer side
    def __iter__(self):
        import torch

        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        free: queue.Queue = queue.Queue()
        for _ in range(3):  # host buffers: being filled, queued, being copied; more once sized
            free.put(None)
        feeder = threading.Thread(target=self._feed, args=(q, stop, free), daemon=True,
                                  name="detbench-feeder")
        feeder.start()
        state = {"ahead": None, "ended": False, "current": None, "sized": False}
        frozen, unfreeze = _freeze_long_lived()
        self.stats["gc_frozen"] = frozen

        def take():
            """The next batch, collated (its copy to the device queued), or None at the end."""
            if state["ended"]:
                return None
            t0 = time.perf_counter()
            item = q.get()
            self.stats["wait_s"] += time.perf_counter() - t0
            if item is _END:
                state["ended"] = True
                return None
            if isinstance(item, _Failure):
                state["ended"] = True
                raise item.exc
            host, metas, ids = item
            if isinstance(host, list):  # images of different shapes: the list path
                inputs = [torch.from_numpy(a) for a in host]
                done = None
            else:
                if not state["sized"]:
                    state["sized"] = True
                    for _ in range(self._more_buffers(host.numel() * host.element_size())):
                        free.put(None)
                inputs = host.to(self.device, non_blocking=True)
                done = torch.cuda.Event() if self._pinned else None
                if done is not None:
                    done.record()
            t1 = time.perf_counter()
            prepared = self.pre.collate(inputs, metas, ids)
            self.stats["collate_s"] += time.perf_counter() - t1
            free.put((host, done) if not isinstance(host, list) else None)
            return prepared

        def peek_for(number):  # no reference to the batch itself: no cycle keeps it alive
            def peek():
                if state["current"] != number:  # only the batch being processed looks ahead
                    return None
                if state["ahead"] is None:
                    state["ahead"] = take()
                return state["ahead"]
            return peek

        try:
            for number in itertools.count():
                prepared, state["ahead"] = (state["ahead"] or take()), None
                if prepared is None:
                    break
                prepared.peek = peek_for(number)
                state["current"] = number
                yield prepared
                del prepared
        finally:
            if unfreeze:
                import gc

                gc.unfreeze()
            state["current"] = None
            stop.set()
            while feeder.is_alive():  # unblock a feeder waiting on a full queue or a buffer
                try:
                    q.get_nowait()
                    free.put(None)
                except queue.Empty:
                    free.put(None)
                    feeder.join(0.05)

    _PINNED_BYTES = 128 * 2**20  # host batch buffers beyond the minimum stay under this

    def _more_buffers(self, nbytes: int) -> int:
        """Buffers to add to the first 3 once a batch's size is known: ``prefetch + 2`` in all,
        fewer (never below 3) when they would pass ``_PINNED_BYTES``."""
        return max(3, min(self.prefetch + 2, self._PINNED_BYTES // max(nbytes, 1))) - 3

    # ---------------------------------------------------------------- feeder side
    def _put(self, q, stop, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _buffer(self, free, shape):
        """A host buffer for one batch: a reused pinned tensor once its last copy has finished."""
        import torch

        entry = free.get()
        if entry is not None:
            buf, done = entry
            if done is not None:
                done.synchronize()
            if tuple(buf.shape) == tuple(shape):
                return buf
        return torch.empty(shape, dtype=torch.uint8, pin_memory=self._pinned)

    def _feed(self, q, stop, free) -> None:
        try:
            if self.cache is not None and self.cache.complete:
                self.stats["cache"] = "hit"
                self._feed_cached(q, stop, free)
            else:
                self._feed_decoded(q, stop, free)
            self._put(q, stop, _END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(q, stop, _Failure(exc))

    def _feed_cached(self, q, stop, free) -> None:
        reader = self.cache.reader()
        try:
            want = [im.id for im in self.images]
            if reader.image_ids[:len(want)] != want:
                raise RuntimeError(f"input cache {self.cache.path}: image ids differ from the dataset's")
            for start in range(0, len(want), self.batch):
                if stop.is_set():
                    return
                n = min(self.batch, len(want) - start)
                buf = self._buffer(free, (n, *reader.shape))
                reader.read_into(start, buf.numpy())
                if not self._put(q, stop, (buf, reader.metas[start:start + n], want[start:start + n])):
                    return
        finally:
            reader.close()

    def _job(self, image):
        t0 = time.perf_counter()
        arr, meta = self.pre.prepare_one(self.dataset.read(image), image.id)
        return arr, meta, time.perf_counter() - t0

    def _feed_decoded(self, q, stop, free) -> None:
        self.stats["mmap_threshold_fixed"] = _return_large_blocks_to_the_os()
        writer = self.cache.writer() if self.cache is not None else None
        ok = False
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="detbench-decode") as pool:
                pending: deque = deque()
                ahead = self.batch + self.workers  # this batch and one image per worker beyond it
                nxt = 0
                try:
                    for start in range(0, len(self.images), self.batch):
                        while nxt < len(self.images) and nxt < start + ahead:
                            pending.append(pool.submit(self._job, self.images[nxt]))
                            nxt += 1
                        n = min(self.batch, len(self.images) - start)
                        results = [pending.popleft().result() for _ in range(n)]
                        if stop.is_set():
                            return
                        arrays = [r[0] for r in results]
                        metas = [r[1] for r in results]
                        self.stats["decode_s"] += sum(r[2] for r in results)
                        ids = [im.id for im in self.images[start:start + n]]
                        host = self._stack(free, arrays)
                        del arrays, results  # only the stacked batch stays resident
                        # the cache is written from the stacked (pinned) batch: no extra copy
                        block = host if isinstance(host, list) else host.numpy()
                        if writer is not None and not writer.append(block, metas, ids):
                            writer = None
                        if not self._put(q, stop, (host, metas, ids)):
                            return
                finally:
                    for f in pending:
                        f.cancel()
            ok = True
        finally:
            if writer is not None:
                writer.commit() if ok else writer.abort()

    def _stack(self, free, arrays):
        import numpy as np

        shape = arrays[0].shape
        if any(a.shape != shape for a in arrays):
            return arrays
        buf = self._buffer(free, (len(arrays), *shape))
        np.stack(arrays, out=buf.numpy())
        return buf
