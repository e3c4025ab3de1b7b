"""A TensorRT logger that keeps what the builder says, for build logs and error messages.

TensorRT reports parser and builder errors only through its ``ILogger``; the
Python exception, if any, says nothing useful.  ``capture_logger`` subclasses
the run-time module's ``ILogger`` (the class is only known once a flavour is
imported) and records every message at or above a severity.
"""
from __future__ import annotations

import threading

# TensorRT's ILogger.Severity values (identical in TensorRT 10, 11 and TensorRT-RTX).
SEVERITY_NAMES = {0: "F", 1: "E", 2: "W", 3: "I", 4: "V"}
LEVELS = {"error": 1, "warning": 2, "info": 3, "verbose": 4}


def capture_logger(module, level: str = "info"):
    """Return an ``ILogger`` of ``module`` recording messages up to ``level`` (see ``LEVELS``).

    The object has ``records`` (list of ``(severity_int, message)``), ``text()``
    and ``errors()``; it is safe to call from TensorRT's worker threads.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: choose one of {', '.join(LEVELS)}")
    limit = LEVELS[level]
    base = module.ILogger

    class CaptureLogger(base):
        def __init__(self):
            base.__init__(self)
            self.records: list[tuple[int, str]] = []
            self._lock = threading.Lock()

        def log(self, severity, msg):  # called by TensorRT
            sev = int(severity)
            if sev <= limit:
                with self._lock:
                    self.records.append((sev, str(msg)))

        def note(self, msg: str) -> None:
            """Add detbench's own line (shown with severity 'I')."""
            with self._lock:
                self.records.append((3, f"[detbench] {msg}"))

        def errors(self) -> list[str]:
            return [m for s, m in self.records if s <= 1]

        def mark(self) -> int:
            return len(self.records)

        def errors_since(self, mark: int) -> list[str]:
            return [m for s, m in self.records[mark:] if s <= 1]

        def text(self) -> str:
            return "\n".join(f"[{SEVERITY_NAMES.get(s, s)}] {m}" for s, m in self.records)

    return CaptureLogger()
