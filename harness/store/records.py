"""Plain, immutable views of stored rows: what the store hands out instead of ORM objects,
so callers can't lazy-load or mutate through a closed session."""
import copy
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class RunRecord:
    """One run.  Datetimes are aware UTC; ``counts`` has every cell status as a key."""

    id: str
    name: str
    created_at: datetime
    finished_at: datetime | None
    status: str
    matrix_path: str | None
    matrix_hash: str
    matrix_yaml: str
    git_sha: str | None
    detbench_version: str
    environment: dict[str, Any]
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of all fields in declaration order; datetimes as ISO 8601 strings."""
        return _json_safe(self)


@dataclass(frozen=True)
class CellRecord:
    """One cell of a run: its plan (key .. params), its state and its result summary.

    ``status`` is pending|running|ok|failed|skipped; ``stage`` names where a failure
    happened (load/export/build/infer/eval/measure).  ``ap`` .. ``throughput_ips`` are
    copies of values inside ``metrics``/``latency``, kept as columns for charting.
    Raw latency/telemetry samples and per-class AP are not here: ask the store.
    """

    id: int
    run_id: str
    key: str
    position: int
    model: str
    backend: str
    precision: str
    batch: int
    imgsz: int
    device: str
    nms: str
    params: dict[str, Any]
    status: str
    stage: str | None
    error: str | None
    log_tail: str | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    metrics: dict[str, Any] | None
    latency: dict[str, Any] | None
    latency_e2e: dict[str, Any] | None
    telemetry: dict[str, Any] | None
    provenance: dict[str, Any] | None
    artifacts: dict[str, Any] | None
    warnings: list[str] | None
    ap: float | None
    ap50: float | None
    latency_median_ms: float | None
    latency_p99_ms: float | None
    throughput_ips: float | None
    stage_times: dict[str, Any] | None = None  # wall seconds per worker stage (startup, load, ...)

    def to_dict(self) -> dict[str, Any]:
        """The cell as a JSON-safe dict, the shape of ``detbench ... --json`` output.

        Keys are exactly the field names above, in that order, always all present
        (absent values are ``None``): id, run_id, key, position, model, backend,
        precision, batch, imgsz, device, nms, params, status, stage, error, log_tail,
        started_at, finished_at, duration_s, metrics, latency, latency_e2e, telemetry,
        provenance, artifacts, warnings, ap, ap50, latency_median_ms, latency_p99_ms,
        throughput_ips, stage_times.  Datetimes are ISO 8601 strings with a ``+00:00`` offset; the
        dict-valued fields are deep copies holding only JSON types, with NaN/inf
        already turned into ``None`` when they were stored.
        """
        return _json_safe(self)


def from_row(cls: type[R], row: Any, **extra: Any) -> R:
    """Build ``cls`` from any object with matching attributes; ``extra`` fills the rest."""
    names = [f.name for f in fields(cls) if f.name not in extra]  # type: ignore[arg-type]
    return cls(**{name: getattr(row, name) for name in names}, **extra)


def _json_safe(record: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(record, f.name)) for f in fields(record)}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return copy.deepcopy(value)


@dataclass(frozen=True)
class AckRecord:
    """An acknowledged change: ``series`` (of cell ``cell_key``) restarts at run ``run_id``.

    ``metric`` is ``all``, ``latency``, ``accuracy`` or ``status``."""

    id: int
    created_at: datetime
    run_id: str
    cell_key: str
    series: str
    metric: str
    reason: str
    author: str | None

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(self)
