"""The results store: every read and write of benchmark results goes through :class:`Store`.

It hands out plain records, never ORM objects, so no caller depends on the schema
or on a session being open; each method is one transaction.
"""
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from harness.store import cells as cellops
from harness.store import locks, migrate, runs
from harness.store.engine import open_engine
from harness.store.records import CellRecord, RunRecord, from_row
from harness.store.schema import (RUN_STATUSES, SERIES, TELEMETRY_FIELDS, Cell, ClassAP,
                                  LatencySample, Run, TelemetrySample)

_RESUMABLE = ("pending", "running")  # running = left behind by a killed process
_RERUNNABLE = ("pending", "running", "ok", "failed")


class Store:
    """A results database, checked on open to be at this code's schema revision.

    ``create``: build the schema in a new or empty database (never with ``readonly``).
    ``readonly``: for viewers (dashboard, reports) that must not change the file or
    race a running benchmark; a missing database is a UserError, while one that
    has the schema but no runs yet is fine (see :meth:`is_empty`).
    """

    def __init__(self, url: str = "sqlite:///results.db", *, create: bool = True,
                 readonly: bool = False) -> None:
        self.url = url
        self.readonly = readonly
        create = create and not readonly
        self._engine = open_engine(url, create=create, readonly=readonly)
        try:
            migrate.prepare(self._engine, url, create=create)
        except BaseException:
            self._engine.dispose()
            raise
        self._sessions = sessionmaker(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed if the block succeeds, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        if self.readonly:
            raise RuntimeError(f"store {self.url} was opened read-only")
        with self.session() as session:
            yield session

    def is_empty(self) -> bool:
        """True when no run was ever recorded (a dashboard shows a hint instead of charts)."""
        with self.session() as session:
            return session.scalars(select(Run.id).limit(1)).first() is None

    # -- runs -----------------------------------------------------------------

    def create_run(self, *, name: str, matrix_path: str | None, matrix_hash: str,
                   matrix_yaml: str, git_sha: str | None, detbench_version: str,
                   environment: dict[str, Any], cells: list[dict[str, Any]]) -> str:
        """Record a run and its whole plan at once, so a crash can't leave half a plan.

        Each cell dict has key, position, model, backend, precision, batch, imgsz,
        device, nms, params; and optionally ``status='skipped'`` with ``error`` as the reason.
        """
        with self._writing() as session:
            created_at = cellops.now()
            run_id = runs.new_id(session, created_at)
            session.add(Run(id=run_id, name=name, created_at=created_at, status="running",
                            matrix_path=matrix_path, matrix_hash=matrix_hash,
                            matrix_yaml=matrix_yaml, git_sha=git_sha,
                            detbench_version=detbench_version, environment=environment))
            session.flush()
            cellops.add_plan(session, run_id, cells)
            return run_id

    def get_run(self, run_id: str) -> RunRecord:
        """``run_id`` may be a full id, a unique prefix, or ``"latest"``."""
        with self.session() as session:
            return runs.records(session, [runs.resolve(session, run_id)])[0]

    def list_runs(self, limit: int | None = None) -> list[RunRecord]:
        """Newest first."""
        with self.session() as session:
            found = session.scalars(select(Run).order_by(*runs.NEWEST_FIRST).limit(limit)).all()
            return runs.records(session, found)

    def finish_run(self, run_id: str, status: str) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"run status is one of {RUN_STATUSES}, not {status!r}")
        with self._writing() as session:
            run = runs.resolve(session, run_id)
            run.status = status
            run.finished_at = None if status == "running" else cellops.now()

    # -- the run lock -----------------------------------------------------------

    def lock_run(self, run_id: str, me: locks.LockHolder, *,
                 stale_after_s: float) -> locks.Takeover | None:
        """Make ``me`` the one process executing the run (see :mod:`harness.store.locks`).

        Returns the stale holder it replaced and why it was stale (None when the run was free);
        raises :class:`~harness.store.locks.RunLocked` when a live process holds it.
        """
        for _ in range(5):  # each lost race re-reads the holder
            with self.session() as session:
                run = runs.resolve(session, run_id)
                run_id, current = run.id, locks.holder(run)
            now = cellops.now()
            why = None
            if current is not None and current.token != me.token:
                why = locks.stale_reason(current, me=me, now=now, stale_after_s=stale_after_s)
                if why is None:
                    raise locks.RunLocked(
                        f"run {run_id} is being executed by {current.describe()} (last heartbeat "
                        f"{_ago(current.heartbeat_at, now)}): wait for it to finish, or stop that "
                        "process first")
            with self._writing() as session:
                if locks.swap(session, run_id, expected=current.token if current else None,
                              new=me, now=now):
                    return None if why is None else locks.Takeover(current, why)
        raise locks.RunLocked(f"run {run_id}: could not take its lock, another process keeps "
                              "taking it; try again")

    def heartbeat_run_lock(self, run_id: str, token: str) -> bool:
        """Refresh the lock's heartbeat; False if the lock is no longer held with ``token``."""
        with self._writing() as session:
            return locks.beat(session, run_id, token, cellops.now())

    def unlock_run(self, run_id: str, token: str) -> bool:
        """Release the lock if ``token`` still holds it."""
        with self._writing() as session:
            return locks.swap(session, run_id, expected=token, new=None, now=cellops.now())

    def run_lock_holder(self, run_id: str) -> locks.LockHolder | None:
        with self.session() as session:
            return locks.holder(runs.resolve(session, run_id))

    # -- cells ----------------------------------------------------------------

    def cells(self, run_id: str, *, status: str | None = None) -> list[CellRecord]:
        """The run's cells in plan order, optionally only those with ``status``."""
        with self.session() as session:
            query = select(Cell).where(Cell.run_id == runs.resolve(session, run_id).id)
            if status is not None:
                query = query.where(Cell.status == status)
            return [from_row(CellRecord, cell)
                    for cell in session.scalars(query.order_by(Cell.position))]

    def cells_to_run(self, run_id: str, *, force: bool = False) -> list[CellRecord]:
        """Cells a (resumed) run still has to execute, in plan order, reset to pending.

        Without ``force``: pending ones and ones a killed process left ``running``;
        ok and failed are final.  With ``force``: every cell that isn't skipped, its
        earlier results discarded.
        """
        wanted = _RERUNNABLE if force else _RESUMABLE
        with self._writing() as session:
            query = (select(Cell).where(Cell.run_id == runs.resolve(session, run_id).id,
                                        Cell.status.in_(wanted)).order_by(Cell.position))
            todo = session.scalars(query).all()
            cellops.reset(session, [cell for cell in todo if cell.status != "pending"])
            return [from_row(CellRecord, cell) for cell in todo]

    def mark_running(self, cell_id: int) -> None:
        with self._writing() as session:
            cell = cellops.get(session, cell_id)
            cellops.reset(session, [cell], status="running")
            cell.started_at = cellops.now()

    def record_result(self, cell_id: int, *, status: str, stage: str | None = None,
                      error: str | None = None, log_tail: str | None = None,
                      duration_s: float | None = None, metrics: dict[str, Any] | None = None,
                      latency: dict[str, Any] | None = None,
                      latency_e2e: dict[str, Any] | None = None,
                      telemetry: dict[str, Any] | None = None,
                      provenance: dict[str, Any] | None = None,
                      artifacts: dict[str, Any] | None = None,
                      warnings: list[str] | None = None,
                      samples: dict[str, list[float]] | None = None,
                      class_ap: list[dict[str, Any]] | None = None,
                      telemetry_samples: list[dict[str, Any]] | None = None) -> None:
        """Store one attempt's outcome, replacing whatever an earlier attempt stored.

        ``samples`` maps a series (``model``/``e2e``) to per-iteration milliseconds;
        ``class_ap`` rows have class_name, ap, ap50; ``telemetry_samples`` rows have
        the keys of :data:`TELEMETRY_FIELDS`.  The scalar columns (ap, ap50,
        latency_median_ms, latency_p99_ms, throughput_ips) are copied from
        ``metrics``/``latency`` by the keys in :data:`cells.SCALAR_SOURCES`.
        """
        result = dict(stage=stage, error=error, log_tail=log_tail,
                      duration_s=cellops.finite(duration_s), metrics=metrics, latency=latency,
                      latency_e2e=latency_e2e, telemetry=telemetry, provenance=provenance,
                      artifacts=artifacts, warnings=list(warnings) if warnings else warnings)
        with self._writing() as session:
            cell = cellops.get(session, cell_id)
            cellops.delete_samples(session, [cell.id])
            cellops.apply_result(cell, status, result)
            cellops.add_samples(session, cell.id, samples=samples, class_ap=class_ap,
                                telemetry_samples=telemetry_samples)

    # -- per-cell detail --------------------------------------------------------

    def record_alignment(self, cell_id: int, alignment: dict[str, Any] | None) -> None:
        """Store (or, with None, clear) a cell's alignment record against its reference.

        Written after the cell's result, by the alignment analysis; a rerun of
        the cell clears it with the rest of its results.
        """
        with self._writing() as session:
            cellops.get(session, cell_id).alignment = alignment

    def alignment(self, cell_id: int) -> dict[str, Any] | None:
        """The cell's alignment record (see ``harness.evaluate.alignment``), None when there is none."""
        with self.session() as session:
            return cellops.get(session, cell_id).alignment

    def alignments(self, run_id: str) -> dict[int, dict[str, Any]]:
        """Every stored alignment record of a run: cell id → record, in plan order."""
        with self.session() as session:
            query = (select(Cell.id, Cell.alignment)
                     .where(Cell.run_id == runs.resolve(session, run_id).id,
                            Cell.alignment.is_not(None))
                     .order_by(Cell.position))
            return {cell_id: record for cell_id, record in session.execute(query)}


    def latency_samples(self, cell_id: int, series: str = "model") -> list[float]:
        """Per-iteration latencies in measurement order."""
        if series not in SERIES:
            raise ValueError(f"latency series is one of {SERIES}, not {series!r}")
        with self.session() as session:
            query = (select(LatencySample.value_ms)
                     .where(LatencySample.cell_id == cell_id, LatencySample.series == series)
                     .order_by(LatencySample.idx))
            return list(session.scalars(query))

    def class_ap(self, cell_id: int) -> list[dict[str, Any]]:
        """``[{"class_name", "ap", "ap50"}, ...]`` sorted by class name."""
        with self.session() as session:
            query = (select(ClassAP.class_name, ClassAP.ap, ClassAP.ap50)
                     .where(ClassAP.cell_id == cell_id).order_by(ClassAP.class_name))
            return [row._asdict() for row in session.execute(query)]

    def telemetry_samples(self, cell_id: int) -> list[dict[str, Any]]:
        """Rows with the keys of TELEMETRY_FIELDS, in sampling order."""
        columns = [getattr(TelemetrySample, name) for name in TELEMETRY_FIELDS]
        with self.session() as session:
            query = (select(*columns).where(TelemetrySample.cell_id == cell_id)
                     .order_by(TelemetrySample.idx))
            return [row._asdict() for row in session.execute(query)]

    def history(self, *, model: str, backend: str, precision: str, batch: int, imgsz: int,
                device: str, nms: str = "none") -> list[dict[str, Any]]:
        """The same cell's outcomes across runs, oldest first, for trend charts.

        Only finished attempts (ok/failed).  Each dict: run_id, run_name, run_created_at,
        git_sha, detbench_version, plus the cell's fields as in :meth:`CellRecord.to_dict`
        (with datetimes left as datetimes).
        """
        query = (select(Cell, Run).join(Run, Cell.run_id == Run.id)
                 .where(Cell.model == model, Cell.backend == backend,
                        Cell.precision == precision, Cell.batch == batch, Cell.imgsz == imgsz,
                        Cell.device == device, Cell.nms == nms,
                        Cell.status.in_(("ok", "failed")))
                 .order_by(Run.created_at, Run.id))
        with self.session() as session:
            return [_history_row(cell, run) for cell, run in session.execute(query)]


def _ago(when, now) -> str:
    return "never" if when is None else f"{max(0.0, (now - when).total_seconds()):.0f} s ago"


def _history_row(cell: Cell, run: Run) -> dict[str, Any]:
    record = from_row(CellRecord, cell)
    return {"run_id": run.id, "run_name": run.name, "run_created_at": run.created_at,
            "git_sha": run.git_sha, "detbench_version": run.detbench_version,
            **{name: getattr(record, name) for name in record.__dataclass_fields__}}
