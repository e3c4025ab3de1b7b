"""The run-level lock: one process executes a run at a time, on SQLite and PostgreSQL alike.

The lock is four columns of the run's row (token, host, pid, heartbeat time).
It is taken by a compare-and-swap ``UPDATE runs ... WHERE lock_token IS <the
token we read>`` and the row count says who won, so two processes racing for
a run cannot both get it on any database.  A holder is *stale* when its
heartbeat is older than ``stale_after_s`` (any host), or when it is on this
host and its process is gone; a stale lock may be taken over.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session

from harness.errors import UserError
from harness.store.schema import Run


@dataclass(frozen=True)
class LockHolder:
    """Who executes a run: host name, process id and a random token unique to that process."""

    host: str
    pid: int
    token: str
    heartbeat_at: datetime | None = None

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}"


@dataclass(frozen=True)
class Takeover:
    """A stale lock that was taken over, and why it was stale."""

    previous: LockHolder
    reason: str


class RunLocked(UserError):
    """Another live process executes the run."""


def holder(run: Run) -> LockHolder | None:
    if run.lock_token is None:
        return None
    return LockHolder(run.lock_host or "?", run.lock_pid or 0, run.lock_token, run.lock_heartbeat_at)


def stale_reason(current: LockHolder, *, me: LockHolder, now: datetime,
                 stale_after_s: float) -> str | None:
    """Why ``current`` no longer executes the run, or None when it may still be alive."""
    if current.host == me.host and not pid_alive(current.pid):
        return f"process {current.pid} no longer exists on {current.host}"
    if current.heartbeat_at is None or now - current.heartbeat_at > timedelta(seconds=stale_after_s):
        age = "never" if current.heartbeat_at is None else \
            f"{(now - current.heartbeat_at).total_seconds():.0f} s ago"
        return f"its last heartbeat was {age} (stale after {stale_after_s:.0f} s)"
    return None


def pid_alive(pid: int) -> bool:
    """True while a process with ``pid`` exists on this host and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    try:  # a killed but not yet reaped child still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def swap(session: Session, run_id: str, *, expected: str | None, new: LockHolder | None,
         now: datetime) -> bool:
    """Set the run's lock to ``new`` (None: release) if its token still is ``expected``."""
    token = Run.lock_token.is_(None) if expected is None else Run.lock_token == expected
    values = dict(lock_token=None, lock_host=None, lock_pid=None, lock_heartbeat_at=None)
    if new is not None:
        values = dict(lock_token=new.token, lock_host=new.host, lock_pid=new.pid, lock_heartbeat_at=now)
    result = session.execute(update(Run).where(Run.id == run_id, token).values(**values)
                             .execution_options(synchronize_session=False))
    return result.rowcount == 1


def beat(session: Session, run_id: str, token: str, now: datetime) -> bool:
    """Refresh the heartbeat; False when the lock is no longer ours (taken over)."""
    result = session.execute(update(Run).where(Run.id == run_id, Run.lock_token == token)
                             .values(lock_heartbeat_at=now)
                             .execution_options(synchronize_session=False))
    return result.rowcount == 1
