"""Run-level helpers for :class:`harness.store.api.Store`: ids, lookup by user-typed
reference, and per-status cell counts.  All take an open session; none commits."""
import secrets
from datetime import datetime
from typing import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from harness.errors import UserError
from harness.store.records import RunRecord, from_row
from harness.store.schema import CELL_STATUSES, Cell, Run

NEWEST_FIRST = (Run.created_at.desc(), Run.id.desc())


def new_id(session: Session, created_at: datetime) -> str:
    """``rYYYYMMDD-HHMMSS-xxxx`` (UTC): sorts by time, and is short enough to type a prefix of."""
    while True:
        run_id = f"r{created_at:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        if session.get(Run, run_id) is None:
            return run_id


def resolve(session: Session, ref: str) -> Run:
    """The run a user means by ``ref``: an id, a unique prefix of one, or ``latest``."""
    if ref == "latest":
        return _latest(session)
    run = session.get(Run, ref)
    if run is not None:
        return run
    found = session.scalars(select(Run).where(Run.id.startswith(ref, autoescape=True))
                            .order_by(*NEWEST_FIRST).limit(2)).all() if ref else []
    if len(found) == 1:
        return found[0]
    if found:
        raise UserError(f"run id prefix {ref!r} is ambiguous ({found[0].id}, {found[1].id}, ...): "
                        "type more of it (`detbench list` shows the ids)")
    raise UserError(f"no run {ref!r} in this database: `detbench list` shows the runs")


def _latest(session: Session) -> Run:
    run = session.scalars(select(Run).order_by(*NEWEST_FIRST).limit(1)).first()
    if run is None:
        raise UserError("no runs in this database yet: run `detbench run` first")
    return run


def records(session: Session, runs: Sequence[Run]) -> list[RunRecord]:
    counts = _status_counts(session, [run.id for run in runs])
    return [from_row(RunRecord, run, counts=counts[run.id]) for run in runs]


def _status_counts(session: Session, run_ids: list[str]) -> dict[str, dict[str, int]]:
    counts = {run_id: dict.fromkeys(CELL_STATUSES, 0) for run_id in run_ids}
    if run_ids:
        rows = session.execute(select(Cell.run_id, Cell.status, func.count())
                               .where(Cell.run_id.in_(run_ids))
                               .group_by(Cell.run_id, Cell.status))
        for run_id, status, count in rows:
            counts[run_id][status] = count
    return counts
