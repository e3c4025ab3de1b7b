"""Cell-level helpers for :class:`harness.store.api.Store`: plan rows, result writing,
and the per-cell sample tables.  All take an open session; none commits."""
import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Iterable

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from harness.store.schema import (FINAL_CELL_STATUSES, SERIES, TELEMETRY_FIELDS, Cell, ClassAP,
                                  LatencySample, TelemetrySample)

#: everything a run of the cell produces; cleared whenever the cell is (re)started
RESULT_FIELDS = ("stage", "error", "log_tail", "started_at", "finished_at", "duration_s",
                 "metrics", "latency", "latency_e2e", "telemetry", "provenance", "artifacts",
                 "warnings", "ap", "ap50", "latency_median_ms", "latency_p99_ms",
                 "throughput_ips", "alignment", "stage_times")

#: scalar column -> (result dict it is copied from, keys tried in order).  The aliases
#: accept mmdet's CocoMetric names as well as the harness's own short ones.
SCALAR_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ap": ("metrics", ("AP",)),
    "ap50": ("metrics", ("AP50",)),
    "latency_median_ms": ("latency", ("median_ms", "p50_ms")),
    "latency_p99_ms": ("latency", ("p99_ms",)),
    "throughput_ips": ("latency", ("throughput_ips",)),
}

_PLAN_REQUIRED = ("key", "model", "backend", "precision", "batch", "imgsz", "device")
_SAMPLE_MODELS = (LatencySample, ClassAP, TelemetrySample)


def now() -> datetime:
    return datetime.now(UTC)


def add_plan(session: Session, run_id: str, cells: list[dict[str, Any]]) -> None:
    """Insert a run's planned cells, rejecting plans a resumed run couldn't match up."""
    counts = Counter(cell.get("key") for cell in cells)
    duplicates = sorted(str(key) for key, count in counts.items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate cell keys in plan: {duplicates}")
    _bulk(session, Cell, [_plan_row(run_id, index, cell) for index, cell in enumerate(cells)])


def _plan_row(run_id: str, index: int, cell: dict[str, Any]) -> dict[str, Any]:
    missing = [name for name in _PLAN_REQUIRED if cell.get(name) is None]
    if missing:
        raise ValueError(f"cell {cell.get('key')!r} lacks {missing}")
    status = cell.get("status", "pending")
    if status not in ("pending", "skipped"):
        raise ValueError(f"cell {cell['key']!r}: a planned cell is pending or skipped, "
                         f"not {status!r}")
    row = {name: cell[name] for name in _PLAN_REQUIRED}
    row.update(run_id=run_id, position=cell.get("position", index), nms=cell.get("nms") or "none",
               params=cell.get("params") or {}, status=status, error=cell.get("error"))
    return row


def get(session: Session, cell_id: int) -> Cell:
    cell = session.get(Cell, cell_id)
    if cell is None:
        raise LookupError(f"no cell with id {cell_id}")
    return cell


def reset(session: Session, cells: Iterable[Cell], status: str = "pending") -> None:
    """Forget everything earlier attempts left behind, so a rerun starts clean."""
    cells = list(cells)
    for cell in cells:
        for name in RESULT_FIELDS:
            setattr(cell, name, None)
        cell.status = status
    delete_samples(session, [cell.id for cell in cells])


def delete_samples(session: Session, cell_ids: list[int]) -> None:
    if not cell_ids:
        return
    for model in _SAMPLE_MODELS:
        session.execute(delete(model).where(model.cell_id.in_(cell_ids)))


def apply_result(cell: Cell, status: str, result: dict[str, Any]) -> None:
    """Write a finished attempt's summary and its chartable scalars onto ``cell``."""
    if status not in FINAL_CELL_STATUSES:
        raise ValueError(f"a result's status is one of {FINAL_CELL_STATUSES}, not {status!r}")
    for name, value in result.items():
        setattr(cell, name, value)
    for column, (source, keys) in SCALAR_SOURCES.items():
        setattr(cell, column, _first_number(result.get(source), keys))
    cell.status = status
    cell.finished_at = now()
    cell.started_at = cell.started_at or cell.finished_at


def _first_number(values: dict[str, Any] | None, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = (values or {}).get(key)
        if value is not None:
            return finite(value)
    return None


def finite(value: Any) -> float | None:
    """NaN and inf mean "no value" for charts; SQLite would turn NaN into NULL anyway."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def add_samples(session: Session, cell_id: int, *,
                samples: dict[str, list[float]] | None,
                class_ap: list[dict[str, Any]] | None,
                telemetry_samples: list[dict[str, Any]] | None) -> None:
    _bulk(session, LatencySample, _latency_rows(cell_id, samples or {}))
    _bulk(session, ClassAP, [_class_ap_row(cell_id, row) for row in class_ap or ()])
    _bulk(session, TelemetrySample, [_telemetry_row(cell_id, index, row)
                                     for index, row in enumerate(telemetry_samples or ())])


def _bulk(session: Session, model: type, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(model), rows)


def _latency_rows(cell_id: int, samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    unknown = set(samples) - set(SERIES)
    if unknown:
        raise ValueError(f"unknown latency series {sorted(unknown)}; expected {SERIES}")
    return [{"cell_id": cell_id, "series": series, "idx": index, "value_ms": float(value)}
            for series, values in samples.items() for index, value in enumerate(values)]


def _class_ap_row(cell_id: int, row: dict[str, Any]) -> dict[str, Any]:
    return {"cell_id": cell_id, "class_name": str(row["class_name"]),
            "ap": finite(row.get("ap")), "ap50": finite(row.get("ap50"))}


def _telemetry_row(cell_id: int, index: int, row: dict[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(TELEMETRY_FIELDS)
    if unknown:
        raise ValueError(f"unknown telemetry fields {sorted(unknown)}; expected {TELEMETRY_FIELDS}")
    values = {name: finite(row.get(name)) for name in TELEMETRY_FIELDS}
    return {"cell_id": cell_id, "idx": index, **values}

