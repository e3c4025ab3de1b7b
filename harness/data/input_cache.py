"""The preprocessed-input cache: test-pipeline outputs (uint8, letterboxed) shared by cells and runs.

Keyed by content — the dataset (annotations file and every image file's
bytes, in evaluation order), the preprocessing (pipeline + data preprocessor
settings and library versions, see ``Preprocessor.pipeline_hash``) and the
image size — so only the first cell of a size decodes images; every later cell
of that size, in this run or another, reads the letterboxed uint8 tensors back.

Layout: ``<cache_dir>/inputs/<key>/`` with ``inputs.u8`` (the images' CHW
uint8 arrays back to back, all of one shape), ``metas.json`` (shape, image ids
and each image's metainfo).  An entry is written to a private temp folder and
renamed into place when complete, so a crash or a concurrent cell never leaves a
half entry; readers use plain file reads (no memory map), so the cache never
adds to a cell's resident memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CODE_VERSION = "1"  # bump when the stored format or what is stored changes


def dataset_hash(ann_file: Path, image_paths: list[Path], workers: int = 8,
                 memo_dir: Path | None = None) -> str:
    """sha256 over the annotations file and every image file's bytes, in order.

    With ``memo_dir``, each file's digest is remembered with its (size, mtime_ns),
    as git's index does, so later cells re-hash only files that changed instead
    of reading a whole dataset (5,000 640 px PNGs are ~5 GB) again.
    """
    from harness.measure.provenance import file_hash

    image_paths = [Path(p) for p in image_paths]
    memo_path = memo = None
    if memo_dir is not None:
        folder = hashlib.sha256(str(Path(image_paths[0]).resolve().parent).encode()).hexdigest()[:16] \
            if image_paths else "empty"
        memo_path = Path(memo_dir) / f"file-digests-{folder}.json"
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
    stats = [p.stat() for p in image_paths]

    def digest(i: int) -> str:
        key, st = str(image_paths[i]), stats[i]
        hit = memo.get(key) if memo is not None else None
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        return file_hash(image_paths[i])

    with ThreadPoolExecutor(max(1, workers)) as pool:  # hashlib releases the GIL
        digests = list(pool.map(digest, range(len(image_paths))))
    if memo is not None:
        memo.update({str(p): [st.st_size, st.st_mtime_ns, d]
                     for p, st, d in zip(image_paths, stats, digests)})
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f"{memo_path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    h = hashlib.sha256(file_hash(ann_file).encode())
    for path, digest in zip(image_paths, digests):
        h.update(f"{path.name}:{digest}\n".encode())
    return h.hexdigest()


def cache_key(data_hash: str, pipeline_hash: str, imgsz: int) -> str:
    return hashlib.sha256(json.dumps([CODE_VERSION, data_hash, pipeline_hash, int(imgsz)]).encode()
                          ).hexdigest()[:24]


def _encode_meta(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if isinstance(v, np.ndarray):
            out[k] = {"__ndarray__": v.tolist(), "dtype": str(v.dtype)}
        elif isinstance(v, tuple):
            out[k] = {"__tuple__": [x.item() if hasattr(x, "item") else x for x in v]}
        elif hasattr(v, "item"):
            out[k] = v.item()
        else:
            out[k] = v
    return out


def _decode_meta(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if isinstance(v, dict) and "__ndarray__" in v:
            out[k] = np.asarray(v["__ndarray__"], dtype=v["dtype"])
        elif isinstance(v, dict) and "__tuple__" in v:
            out[k] = tuple(v["__tuple__"])
        else:
            out[k] = v
    return out


class InputCache:
    """One cache entry: :meth:`reader` when complete, else :meth:`writer` to fill it once."""

    def __init__(self, root: Path, key: str):
        self.path = Path(root) / "inputs" / key

    @property
    def complete(self) -> bool:
        return (self.path / "metas.json").is_file() and (self.path / "inputs.u8").is_file()

    def reader(self) -> "CacheReader":
        return CacheReader(self.path)

    def writer(self) -> "CacheWriter":
        return CacheWriter(self.path)


class CacheReader:
    def __init__(self, path: Path):
        info = json.loads((path / "metas.json").read_text())
        self.shape = tuple(info["shape"])
        self.image_ids = info["image_ids"]
        self.metas = [_decode_meta(m) for m in info["metas"]]
        self._file = open(path / "inputs.u8", "rb", buffering=0)
        self._item = int(np.prod(self.shape))

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Images ``start .. start + len(out)`` into ``out`` ((n, 3, H, W) uint8, e.g. pinned)."""
        view = memoryview(out.reshape(-1))
        want = len(view)
        got = os.preadv(self._file.fileno(), [view], start * self._item) if hasattr(os, "preadv") \
            else self._file.readinto(view)
        if got != want:
            raise OSError(f"input cache {self._file.name}: short read ({got} of {want} bytes)")

    def close(self) -> None:
        self._file.close()


class CacheWriter:
    """Appends images in order; :meth:`commit` publishes the entry, :meth:`abort` drops it."""

    def __init__(self, path: Path):
        self.final = path
        self.tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{id(self)}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self._file = open(self.tmp / "inputs.u8", "wb")
        self.shape, self.image_ids, self.metas = None, [], []

    def append(self, arrays, metas: list[dict], image_ids: list[int]) -> bool:
        """Add a batch (stacked array or list of arrays); False (entry dropped) on mixed shapes."""
        if self._file is None:
            return False
        shape = tuple(arrays[0].shape)
        if self.shape is None:
            self.shape = shape
        if shape != self.shape or any(tuple(a.shape) != shape for a in arrays):
            self.abort()  # not one shape: nothing to cache (the pass itself goes on)
            return False
        if isinstance(arrays, np.ndarray):  # a stacked batch: written from its own memory, no copy
            self._file.write(memoryview(np.ascontiguousarray(arrays).reshape(-1)))
        else:
            for a in arrays:
                self._file.write(memoryview(np.ascontiguousarray(a).reshape(-1)))
        self.metas.extend(_encode_meta(m) for m in metas)
        self.image_ids.extend(int(i) for i in image_ids)
        return True

    def commit(self) -> bool:
        if self._file is None:
            return False
        self._file.close()
        self._file = None
        (self.tmp / "metas.json").write_text(json.dumps(
            {"shape": list(self.shape), "image_ids": self.image_ids, "metas": self.metas}))
        try:
            os.rename(self.tmp, self.final)  # another cell may have published the same entry first
        except OSError:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return True

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.tmp, ignore_errors=True)
