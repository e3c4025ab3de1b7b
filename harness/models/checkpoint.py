"""What is wrong with a checkpoint file, in one line: cheap checks first, torch.load's text last.

``sniff`` reads only the file's size and first bytes (and a zip's central
directory), so the matrix check calls it before any cell runs; ``load`` is what
the cell's ``load`` stage calls, turning torch's errors into a short reason
whose long library text goes to the log.  The advice to set
``trust_checkpoint: true`` is given only for a valid pickle that
``weights_only=True`` refused, never for a file that is not a checkpoint.
"""
from __future__ import annotations

import struct
import sys
import zipfile
from pathlib import Path

from harness.errors import UserError

_PICKLE_PROTOCOLS = {bytes([0x80, p]) for p in range(2, 6)}
_SAFE_GLOBALS = ("torch.", "collections.", "builtins.", "_codecs.", "numpy.")
_ONNX_FIELD_TAGS = {0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42}  # producer, domain, graph, opset...


def sniff(path: str | Path) -> str | None:
    """Why ``path`` cannot be a PyTorch checkpoint, from its first bytes; None when it may be one."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes): an interrupted download or copy? fetch it again"
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        return _zip_problem(path)
    if head[:2] in _PICKLE_PROTOCOLS:
        return None  # the legacy (non-zip) torch.save format is a pickle
    if _looks_onnx(head):
        return ("not a PyTorch checkpoint: it looks like an ONNX model; give it as the model's "
                "ONNX source (`onnx:`), not as `checkpoint:`")
    if len(head) >= 9 and struct.unpack("<Q", head[:8])[0] < size and head[8:9] == b"{":
        return ("not a PyTorch checkpoint: it looks like a safetensors file; save the state_dict "
                "with torch.save")
    return f"not a PyTorch checkpoint: unknown format (first bytes {head[:8].hex(' ')})"


def _zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return ("not a readable PyTorch checkpoint: the zip archive is truncated or damaged "
                "(an interrupted download or copy?); fetch or save it again")
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return "not a PyTorch checkpoint: a zip archive without data.pkl (not written by torch.save)"
    return None


def _looks_onnx(head: bytes) -> bool:
    """ONNX ModelProto starts with ir_version (field 1, a small varint), then another field."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 32 and head[2] in _ONNX_FIELD_TAGS


def load(path: str | Path, *, trust_checkpoint: bool) -> object:
    """``torch.load`` with an explicit ``weights_only``; every failure one line (UserError)."""
    import pickle

    import torch

    path = Path(path)
    problem = sniff(path)
    if problem:
        raise UserError(f"checkpoint '{path}': {problem}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as exc:
        _to_log(f"torch.load('{path}') failed", exc)
        found = None if trust_checkpoint else pickled_globals(path)
        if found is not None:  # a well-formed pickle that weights_only refused
            example = next((g for g in found if not g.startswith(_SAFE_GLOBALS)), None)
            raise UserError(
                f"checkpoint '{path}' holds pickled Python objects"
                + (f" (e.g. {example})" if example else "") + " that torch.load(weights_only=True) "
                "refuses; if you trust this file set `trust_checkpoint: true` for the model in the "
                "matrix, or save only its state_dict") from None
        raise UserError(f"checkpoint '{path}' is damaged or not a PyTorch checkpoint "
                        f"(torch.load: {_first_line(exc)})") from None
    except (RuntimeError, EOFError, ValueError, IndexError, KeyError, OSError, AttributeError) as exc:
        _to_log(f"torch.load('{path}') failed", exc)
        raise UserError(f"checkpoint '{path}' is damaged or not a PyTorch checkpoint "
                        f"(torch.load: {_first_line(exc)})") from None


def pickled_globals(path: str | Path) -> list[str] | None:
    """The globals a checkpoint's pickle names, read without executing it (``pickletools``);
    None when the file is not a well-formed torch.save pickle."""
    import io
    import pickletools

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                stream, pickles = io.BytesIO(archive.read(name)), 1
        else:  # legacy format: magic, protocol, sys_info, the object, storage keys
            stream, pickles = io.BytesIO(path.read_bytes()), 5
        found, strings = [], []
        for _ in range(pickles):
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        return found
    except Exception:  # any parse failure means: not a well-formed pickle
        return None


def check_fits(model, state: dict, path: str | Path) -> None:
    """Refuse, in one line, weights whose names or shapes do not match the built model."""
    own = model.state_dict()
    differ = [(k, list(v.shape), list(own[k].shape)) for k, v in state.items()
              if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if not (differ or missing or unexpected):
        return
    lines = [f"{k}: checkpoint {a} vs model {b}" for k, a, b in differ]
    lines += [f"missing from the checkpoint: {k}" for k in missing]
    lines += [f"not in the model: {k}" for k in unexpected]
    print(f"[detbench] checkpoint '{path}' does not match the config:\n  " + "\n  ".join(lines),
          flush=True)
    parts = []
    if differ:
        k, a, b = differ[0]
        parts.append(f"{len(differ)} tensors differ in shape, e.g. {k}: ckpt {a} vs model {b}")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    raise UserError(f"checkpoint '{path}' does not match the config: {'; '.join(parts)} "
                    "(full list in the log); check that the config is the one it was trained with")


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _to_log(what: str, exc: BaseException) -> None:
    print(f"[detbench] {what}: {type(exc).__name__}: {exc}", file=sys.stdout, flush=True)
