"""Content-keyed cache files whose bytes are verified on every read (self-healing).

Every cached artifact — exported ONNX, fp16 and Q/DQ ONNX, calibration ranges,
TensorRT engines — is written once, atomically, with its sha256 beside it
(``<file>.sha256``, in ``sha256sum`` format), and checked against it whenever
it is reused.  A mismatch or a missing record (a truncated copy, a disk error,
an interrupted write, a hand edit) deletes the entry, records a warning, and
the entry is built again: one bad file never fails every later run.

Warnings go to the log at once and are kept for the cell: the worker adds
:func:`drain_warnings` to the cell's warnings (one cell per process).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from harness.measure.provenance import file_hash

SIDECAR = ".sha256"
_warnings: list[str] = []


def sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR)


def cached(path: str | Path, build: Callable[[Path], object]) -> Path:
    """``path``, verified; built by ``build(staging_path)`` when missing or corrupted.

    ``build`` writes the file at the path it is given (same folder, so the final
    rename is atomic); its return value is ignored.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and verify(path):
        return path
    with locked(path.with_name(f".{path.name}.lock")):
        if path.exists() and verify(path):  # built by another process while we waited
            return path
        staging = path.with_name(f".staging-{os.getpid()}-{path.name}")
        try:
            build(staging)
            if not staging.is_file():
                raise RuntimeError(f"cache build for {path.name} wrote nothing at {staging}")
            os.replace(staging, path)
        finally:
            staging.unlink(missing_ok=True)
        record(path)
    return path


def record(path: str | Path) -> str:
    """Write ``path``'s sha256 beside it (atomically); returns the digest."""
    path = Path(path)
    digest = file_hash(path)
    atomic_write(sidecar(path), f"{digest}  {path.name}\n".encode())
    return digest


def verify(path: str | Path, expected: str | None = None) -> bool:
    """True when ``path``'s bytes match ``expected`` (default: the sha256 recorded beside it).

    On a mismatch or a missing record the entry is deleted (with its sidecar)
    and a warning recorded, so the caller builds it again.
    """
    path = Path(path)
    if expected is None:
        try:
            expected = sidecar(path).read_text().split()[0]
        except (OSError, IndexError):
            return heal(path, "no sha256 recorded beside it")
    actual = file_hash(path)
    if actual == expected:
        return True
    return heal(path, f"sha256 {actual[:12]}… does not match the recorded {expected[:12]}… "
                      f"({path.stat().st_size} bytes)")


def heal(path: str | Path, problem: str, *, also: tuple[Path, ...] = ()) -> bool:
    """Delete a corrupted entry (and ``also``) and record a warning; returns False."""
    path = Path(path)
    for victim in (path, sidecar(path), *also):
        Path(victim).unlink(missing_ok=True)
    warn(f"cache entry {path} was corrupted ({problem}): deleted and rebuilt")
    return False


def warn(text: str) -> None:
    print(f"[detbench] warning: {text}", flush=True)
    _warnings.append(text)


def drain_warnings() -> list[str]:
    """The cache warnings recorded in this process since the last call."""
    out = list(_warnings)
    _warnings.clear()
    return out


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX); elsewhere no lock (a double build only wastes time)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
