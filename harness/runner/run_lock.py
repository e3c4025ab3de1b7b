"""Hold a run's lock while executing it: heartbeat in a thread, release on any exit.

``detbench run`` and ``run --resume`` execute a run only while holding its lock
(:mod:`harness.store.locks`), so a second executor of a live run is refused
and one left by a killed process is taken over.  SIGTERM is turned into
``SystemExit`` while the lock is held (unless the caller installed its own
handler), so a terminated run releases its lock too; SIGKILL cannot be
caught, and is what the stale-lock rule is for.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from harness.errors import UserError
from harness.store.locks import LockHolder

HEARTBEAT_S = 10.0
#: a holder on another host whose heartbeat is older than this is presumed dead
STALE_AFTER_S = float(os.environ.get("DETBENCH_LOCK_STALE_S", 120.0))


@dataclass
class HeldLock:
    """The lock this process holds; ``lost`` gets a reason if another process took it over."""

    holder: LockHolder
    run_id: str
    lost: list = field(default_factory=list)

    def check(self) -> None:
        """Stop before the next cell when the lock was taken over (our heartbeat was too late)."""
        if self.lost:
            raise UserError(f"run {self.run_id}: {self.lost[0]}; stopped before running more cells")


def this_process() -> LockHolder:
    return LockHolder(socket.gethostname(), os.getpid(), secrets.token_hex(16))


@contextmanager
def hold_run_lock(store, run_id: str, *, note: Callable[[str], None] = lambda text: None,
                  heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S
                  ) -> Iterator[HeldLock]:
    me = this_process()
    takeover = store.lock_run(run_id, me, stale_after_s=stale_after_s)
    if takeover is not None:
        note(f"run {run_id}: took over the lock of {takeover.previous.describe()}: "
             f"{takeover.reason}")
    stop = threading.Event()
    held = HeldLock(me, run_id)
    lost = held.lost
    thread = threading.Thread(target=_heartbeat, args=(store, run_id, me.token, heartbeat_s, stop, lost),
                              name="detbench-run-lock", daemon=True)
    thread.start()
    restore = _sigterm_raises()
    try:
        yield held
    finally:
        stop.set()
        thread.join()
        store.unlock_run(run_id, me.token)
        restore()


def _heartbeat(store, run_id: str, token: str, every_s: float, stop: threading.Event,
               lost: list) -> None:
    while not stop.wait(every_s):
        try:
            if not store.heartbeat_run_lock(run_id, token):
                lost.append("another process took over this run's lock while it ran "
                            "(the heartbeat was late): check the run's cells")
                return
        except Exception as exc:  # a database hiccup: try again at the next beat
            print(f"detbench: run lock heartbeat failed: {type(exc).__name__}: {exc}", flush=True)


def _sigterm_raises() -> Callable[[], None]:
    """SIGTERM → SystemExit(143) in the main thread, if nobody else handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)
