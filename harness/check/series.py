"""Series identity: everything that changes *what* a cell measures.

Model and checkpoint hash, backend, precision, batch, image size, NMS, the device kind
(GPU name, or CPU model), timing mode (CUDA graph, end-to-end), evaluation settings,
dataset hash and, for rotated cells, the box type (#19: rotated-IoU AP is another metric).  Software versions (driver, CUDA, torch, ONNX Runtime, TensorRT, detbench)
are not part of it: they are shown where they changed (:func:`provenance_diff`).

Cells store these pieces in ``params`` (the plan) and ``provenance`` (measured); a
cell without provenance (failed early, skipped) has only its *plan* identity and
joins the newest earlier series with the same plan.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

#: provenance keys that are the series' identity, not annotations
IDENTITY_PROVENANCE = ("checkpoint_hash", "annotations_hash", "gpu_name", "eval")
#: provenance keys never worth showing in a diff (they change every run or are identity)
_NOISE = {"host", "torch_threads", "cpu_count", "date", "config"}


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_identity(cell: Any) -> dict[str, Any]:
    """What the plan fixes: axes, timing mode, eval settings and dataset spec (no paths)."""
    params = cell.params or {}
    timing = params.get("timing") or {}
    dataset = params.get("dataset") or {}
    # a rotated cell's AP is rotated-IoU AP (#19): never the series of a horizontal one (the key
    # is absent for horizontal cells, so their series keep the ids they had before)
    rotated = {"box_type": "rotated"} if params.get("box_type") == "rotated" else {}
    return {**rotated, "model": cell.model, "backend": cell.backend, "precision": cell.precision,
            "batch": cell.batch, "imgsz": cell.imgsz, "nms": cell.nms or "none",
            "device_kind": "cuda" if str(cell.device).startswith("cuda") else str(cell.device),
            "cuda_graph": bool(timing.get("cuda_graph", False)), "e2e": bool(timing.get("e2e", True)),
            "eval": params.get("eval"), "dataset": {"limit": dataset.get("limit"),
                                                     "synth": dataset.get("synth")}}


def measured_identity(cell: Any, run_environment: dict | None) -> dict[str, Any] | None:
    """What only a finished cell knows: checkpoint and dataset hash, device name, the
    effective eval settings; None without provenance."""
    prov = cell.provenance
    if not prov:
        return None
    device = prov.get("gpu_name") if str(cell.device).startswith("cuda") else \
        (run_environment or {}).get("cpu")
    rotated = {"box_type": "rotated"} if (cell.metrics or {}).get("box_type") == "rotated" else {}
    return {**rotated, "checkpoint": prov.get("checkpoint_hash"),
            "dataset": prov.get("annotations_hash"), "device": device, "eval": prov.get("eval")}


def plan_id(cell: Any) -> str:
    return _digest(plan_identity(cell))


def series_id(cell: Any, run_environment: dict | None) -> str | None:
    """The cell's series id, None when it has no provenance (see :func:`assign`)."""
    measured = measured_identity(cell, run_environment)
    return None if measured is None else _digest([plan_identity(cell), measured])


def assign(rows: list[dict]) -> list[str | None]:
    """Series ids of history rows (oldest first, as ``Store.series_candidates`` gives
    them): rows without provenance inherit the newest earlier series of their plan, or
    the next later one when there is none before."""
    from harness.store import CellRecord

    fields = CellRecord.__dataclass_fields__
    cells = [CellRecord(**{k: row[k] for k in fields}) for row in rows]
    ids = [series_id(c, row.get("run_environment")) for c, row in zip(cells, rows)]
    plans = [plan_id(c) for c in cells]
    last: dict[str, str] = {}
    pending: dict[str, list[int]] = {}
    for i, (sid, plan) in enumerate(zip(ids, plans)):
        if sid is None:
            if plan in last:
                ids[i] = last[plan]
            else:
                pending.setdefault(plan, []).append(i)
            continue
        last[plan] = sid
        for j in pending.pop(plan, []):
            ids[j] = sid
    return ids


def annotations(cell: Any, run: dict) -> dict[str, Any]:
    """Flat software/hardware facts of a cell's run, for diffs: versions, driver, git sha."""
    flat: dict[str, Any] = {"git_sha": run.get("git_sha"),
                            "detbench_version": run.get("detbench_version")}
    env = run.get("run_environment") or {}
    for name, version in (env.get("packages") or {}).items():
        flat[f"packages.{name}"] = version
    for key in ("python", "platform", "cpu"):
        flat[key] = env.get(key)
    for key, value in (cell.provenance or {}).items():
        if key in _NOISE or key in IDENTITY_PROVENANCE or key.endswith("_hash"):
            continue
        if not isinstance(value, (dict, list)):
            flat[key] = value
    return flat


def provenance_diff(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"field", "before", "after"}]`` for every annotation that changed."""
    keys = sorted(set(before) | set(after))
    return [{"field": k, "before": before.get(k), "after": after.get(k)} for k in keys
            if before.get(k) != after.get(k)]
