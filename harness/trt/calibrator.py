"""INT8 calibrators for TensorRT 10's implicit quantization (weak typing).

TensorRT 10 deprecated the ``IInt8*Calibrator`` classes (10.1) and TensorRT 11
and TensorRT-RTX removed them: there int8 comes from a Q/DQ ONNX.  This module
serves TensorRT 10 only, and is exercised for real only where TensorRT 10 and a
GPU are present; its cache and batching logic is unit-tested with a stand-in
module.
"""
from __future__ import annotations

import itertools
from pathlib import Path

from harness.errors import UserError

_BASES = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


def make_calibrator(trt_module, method: str, batches, cache_path, *, input_name: str = "images",
                    device: str = "cuda"):
    """A calibrator object subclassing ``trt_module.IInt8EntropyCalibrator2`` or ``IInt8MinMaxCalibrator``.

    ``batches`` is an iterable of float32 numpy arrays (N, 3, H, W), all of one
    shape (a shorter last batch is dropped: TensorRT calibrates at one shape);
    it is consumed lazily: when ``cache_path`` already holds a calibration cache
    TensorRT skips ``get_batch`` and only the first batch is read, for its shape.  After calibration
    TensorRT calls ``write_calibration_cache`` and the cache is written
    atomically to ``cache_path`` (None: not kept).

    Device memory: each batch is copied into one torch CUDA tensor allocated
    once, and ``get_batch`` returns its ``data_ptr()``.  Not pycuda: torch
    already owns the process's CUDA context (the primary context) and a caching
    allocator, and ``pycuda.autoinit`` would create a second context, whose
    pointers are not valid in the context TensorRT builds in and whose memory
    torch's allocator cannot see or reuse.

    The class is defined inside this function because the base class exists only
    once a TensorRT module is imported.  Exceptions inside ``get_batch`` cannot
    cross TensorRT's C++ boundary: the calibrator keeps the first in ``error``
    and ends calibration, and ``build_engine`` raises it as a BuildError.
    """
    if method not in _BASES:
        raise UserError(f"unknown calibration method '{method}': choose {' or '.join(_BASES)}")
    base = getattr(trt_module, _BASES[method], None)
    if base is None:
        version = getattr(trt_module, "__version__", "?")
        raise UserError(f"{getattr(trt_module, '__name__', 'this TensorRT')} {version} has no "
                        f"{_BASES[method]}: implicit INT8 calibration exists only in TensorRT 10 "
                        f"and older; use a Q/DQ ONNX (explicit quantization)")
    cache_file = Path(cache_path) if cache_path is not None else None

    class DetbenchCalibrator(base):
        def __init__(self):
            base.__init__(self)  # required for pybind11 trampolines
            self.method = method
            self.cache_path = cache_file
            self.input_name = input_name
            self.device = device
            self.num_batches = 0
            self.dropped = 0
            self.cache_read = False
            self.cache_written = False
            self.error: BaseException | None = None
            self._iter = iter(batches)
            self._first = None
            self._buffer = None

        # -- shape of the calibration batches (peeks at the first batch once)
        @property
        def batch_shape(self) -> tuple[int, ...]:
            if self._first is None:
                try:
                    first = next(self._iter)
                except StopIteration:
                    raise UserError("calibration data is empty: no batch to calibrate on") from None
                self._first = _as_batch(first)
                self._iter = itertools.chain([self._first], self._iter)
            return tuple(self._first.shape)

        def get_batch_size(self) -> int:
            try:
                return int(self.batch_shape[0])
            except Exception as exc:
                self.error = self.error or exc
                return 1

        def get_batch(self, names):
            try:
                return self._next_pointers(list(names))
            except Exception as exc:  # never let it reach TensorRT's C++ frames
                self.error = self.error or exc
                return None

        def _next_pointers(self, names):
            if names != [self.input_name]:
                raise UserError(f"calibrator feeds only '{self.input_name}', TensorRT asked for "
                                f"{names}")
            shape = self.batch_shape
            for raw in self._iter:
                batch = _as_batch(raw)
                if batch.shape != shape:
                    if batch.shape[1:] == shape[1:] and batch.shape[0] < shape[0]:
                        self.dropped += int(batch.shape[0])
                        continue  # short last batch
                    raise UserError(f"calibration batch of shape {batch.shape}; expected {shape}")
                self._copy_to_device(batch)
                self.num_batches += 1
                return [int(self._buffer.data_ptr())]
            self.free()
            return None

        def _copy_to_device(self, batch) -> None:
            import torch

            host = torch.from_numpy(batch)
            if self._buffer is None:
                self._buffer = torch.empty(host.shape, dtype=torch.float32, device=self.device)
            self._buffer.copy_(host)
            if self._buffer.is_cuda:
                # TensorRT reads the buffer on its own stream: finish the copy first.
                torch.cuda.current_stream(self._buffer.device).synchronize()

        def read_calibration_cache(self):
            if self.cache_path is None or not self.cache_path.is_file():
                return None
            data = self.cache_path.read_bytes()
            if not data:
                return None  # an empty file means: calibrate again
            self.cache_read = True
            return data

        def write_calibration_cache(self, cache) -> None:
            if self.cache_path is None:
                return
            from harness.trt.build import atomic_write

            atomic_write(self.cache_path, memoryview(cache).tobytes())
            self.cache_written = True

        def free(self) -> None:
            self._buffer = None

        def __repr__(self) -> str:
            return (f"DetbenchCalibrator(method={self.method!r}, cache={str(self.cache_path)!r}, "
                    f"batches={self.num_batches})")

    return DetbenchCalibrator()


def _as_batch(array):
    import numpy as np

    batch = np.ascontiguousarray(array, dtype=np.float32)
    if batch.ndim != 4:
        raise UserError(f"calibration batches must be (N, 3, H, W) arrays, got shape {batch.shape}")
    return batch
