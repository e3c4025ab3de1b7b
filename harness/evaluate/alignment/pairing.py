"""Which cell of a run is a cell's reference, and which is its batch-1 twin.

Works on anything with the CellRecord attributes, so it is testable with stubs.
"""
from __future__ import annotations

import json

REFERENCE_BACKEND, REFERENCE_PRECISION = "pytorch", "fp32"


def _reference_rank(cell, ref) -> tuple:
    """Batch 1 first, then the smallest batch; then the same device, nms none, plan order."""
    return (ref.batch != 1, ref.batch, ref.device != cell.device, ref.nms != "none", ref.position)


def reference_rule(cell) -> tuple[str, str, str | None]:
    """(backend, precision, device or None): PyTorch fp32 for mmyolo models; for an ``onnx:``
    model the matrix's ``reference`` (default ONNX Runtime fp32 on CPU), no PyTorch needed."""
    spec = (cell.params or {}).get("model_spec") or {}
    onnx = spec.get("onnx") or spec.get("ultralytics")
    if onnx:
        ref = onnx.get("reference") or {}
        return ref.get("backend", "onnxruntime"), ref.get("precision", "fp32"), ref.get("device", "cpu")
    return REFERENCE_BACKEND, REFERENCE_PRECISION, None


def reference_for(cell, cells) -> tuple[object | None, str | None]:
    """``(reference, None)`` or ``(None, why there is none)``; a reference is its own reference."""
    backend, precision, device = reference_rule(cell)
    same = [c for c in cells if c.model == cell.model and c.imgsz == cell.imgsz
            and c.backend == backend and c.precision == precision
            and (device is None or c.device == device)]
    ok = sorted((c for c in same if c.status == "ok"), key=lambda c: _reference_rank(cell, c))
    if ok:
        return ok[0], None
    if same:
        states = ", ".join(f"{c.key} is {c.status}" for c in same)
        return None, f"no reference: {states}"
    where = f" on {device}" if device else ""
    return None, (f"no reference: the run has no {backend} {precision} cell{where} "
                  f"of {cell.model} at imgsz {cell.imgsz}")


def _twin_key(cell) -> tuple:
    params = cell.params or {}
    ev = json.dumps(params.get("eval"), sort_keys=True)
    # a calibration study's int8 cells differ in their calibration point, not only in batch
    return (cell.model, cell.backend, cell.precision, cell.imgsz, cell.device, cell.nms, ev,
            params.get("calibration_variant"))


def batch_twin(cell, cells):
    """The ok cell differing only in batch (batch 1, else the smallest), if smaller than ``cell``'s."""
    twins = sorted((c for c in cells if c.status == "ok" and c.id != cell.id
                    and _twin_key(c) == _twin_key(cell)), key=lambda c: (c.batch != 1, c.batch))
    if twins and twins[0].batch < cell.batch:
        return twins[0]
    return None
