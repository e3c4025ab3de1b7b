"""ORM models: the only place that names tables and columns.

What the dashboard filters or charts on is a real column; everything whose shape
belongs to another module (metric dicts, summaries, provenance) is JSON, so a new
metric needs no migration.  Any change here needs a new file in
``migrations/versions``; ``tests/test_store.py`` checks that the migrations and
these models agree.
"""
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (JSON, DateTime, Float, ForeignKey, Index, MetaData, String, Text,
                        TypeDecorator, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RUN_STATUSES = ("running", "finished", "interrupted")
CELL_STATUSES = ("pending", "running", "ok", "failed", "skipped")
#: statuses a cell can end in; ``record_result`` accepts only these
FINAL_CELL_STATUSES = ("ok", "failed", "skipped")
SERIES = ("model", "e2e")
TELEMETRY_FIELDS = ("t_s", "power_w", "sm_clock_mhz", "mem_clock_mhz", "temp_c", "mem_used_mb",
                    "gpu_util")

# Constraint names must be deterministic for SQLite batch migrations to find them later.
_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """SQLite keeps no time zone: store naive UTC, hand back aware UTC, refuse naive input."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store needs aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)
    type_annotation_map = {
        datetime: UTCDateTime(),
        str: String(255),
        float: Float(),  # as the migrations say; SQLAlchemy 2 would pick Double
        dict[str, Any]: JSON(none_as_null=True),
        list[str]: JSON(none_as_null=True),
    }


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    matrix_path: Mapped[str | None] = mapped_column(Text)
    matrix_hash: Mapped[str] = mapped_column(String(128))
    matrix_yaml: Mapped[str] = mapped_column(Text)
    git_sha: Mapped[str | None] = mapped_column(String(64))
    detbench_version: Mapped[str] = mapped_column(String(64))
    environment: Mapped[dict[str, Any]]
    # the run-level lock (harness.store.locks): all None when no process executes the run
    lock_token: Mapped[str | None] = mapped_column(String(64))
    lock_host: Mapped[str | None]
    lock_pid: Mapped[int | None]
    lock_heartbeat_at: Mapped[datetime | None]


class Cell(Base):
    __tablename__ = "cells"
    __table_args__ = (
        UniqueConstraint("run_id", "key"),
        Index("ix_cells_run_id_position", "run_id", "position"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str]
    position: Mapped[int]
    model: Mapped[str]
    backend: Mapped[str] = mapped_column(String(64))
    precision: Mapped[str] = mapped_column(String(32))
    batch: Mapped[int]
    imgsz: Mapped[int]
    device: Mapped[str] = mapped_column(String(64))
    nms: Mapped[str] = mapped_column(String(64), default="none")
    params: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    log_tail: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    duration_s: Mapped[float | None]
    metrics: Mapped[dict[str, Any] | None]
    latency: Mapped[dict[str, Any] | None]
    latency_e2e: Mapped[dict[str, Any] | None]
    telemetry: Mapped[dict[str, Any] | None]
    provenance: Mapped[dict[str, Any] | None]
    artifacts: Mapped[dict[str, Any] | None]
    warnings: Mapped[list[str] | None]
    ap: Mapped[float | None]
    ap50: Mapped[float | None]
    latency_median_ms: Mapped[float | None]
    latency_p99_ms: Mapped[float | None]
    throughput_ips: Mapped[float | None]
    # the alignment record against the run's PyTorch fp32 reference (harness.runner.compare)
    alignment: Mapped[dict[str, Any] | None]


class LatencySample(Base):
    __tablename__ = "latency_samples"

    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"),
                                         primary_key=True)
    series: Mapped[str] = mapped_column(String(16), primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    value_ms: Mapped[float]


class ClassAP(Base):
    __tablename__ = "class_ap"

    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"),
                                         primary_key=True)
    class_name: Mapped[str] = mapped_column(primary_key=True)
    ap: Mapped[float | None]
    ap50: Mapped[float | None]


class TelemetrySample(Base):
    __tablename__ = "telemetry_samples"

    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"),
                                         primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    t_s: Mapped[float]
    power_w: Mapped[float | None]
    sm_clock_mhz: Mapped[float | None]
    mem_clock_mhz: Mapped[float | None]
    temp_c: Mapped[float | None]
    mem_used_mb: Mapped[float | None]
    gpu_util: Mapped[float | None]
