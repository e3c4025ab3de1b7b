"""``detbench dashboard``: start the Streamlit results dashboard on 127.0.0.1.

The app (``dashboard/app.py`` of the detbench checkout) opens the store read-only, so it can
watch a database that a ``detbench run`` is still writing.  Also runnable on its own:
``python -m harness.dashboard_cli [--db URL] [--port N]``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from harness.errors import UserError

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
DEFAULT_PORT = 8501
HOST = "127.0.0.1"


def command(db: str, port: int) -> list[str]:
    """The ``streamlit run`` command line for ``launch``."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", HOST, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
            "--server.fileWatcherType", "none",
            "--", "--db", db]


def launch(db: str, port: int = DEFAULT_PORT) -> int:
    """Run the dashboard in the foreground until Ctrl-C; returns streamlit's exit code."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    if importlib.util.find_spec("streamlit") is None or importlib.util.find_spec("plotly") is None:
        raise UserError("the dashboard needs streamlit and plotly: pip install -e '.[dashboard]'")
    if not APP.is_file():
        raise UserError(f"dashboard app not found at {APP}: run detbench from a source checkout "
                        "(pip install -e .)")
    _check_store(db)
    print(f"detbench dashboard: http://{HOST}:{port}  (store {db}, read-only; Ctrl-C stops it)",
          file=sys.stderr)
    env = {**os.environ, "DETBENCH_DB": db}
    return _call(command(db, port), env)


def _check_store(db: str) -> None:
    """A URL or database that cannot be opened is refused here, in one line, before streamlit
    starts; a database that does not exist yet is fine (the dashboard says how to create it)."""
    from harness.store import current_revision

    current_revision(db)


def _call(cmd: list[str], env: dict[str, str]) -> int:
    """Run streamlit in the foreground; SIGTERM/SIGHUP to us stop it too (no orphaned server).

    Ctrl-C reaches streamlit directly (same process group), which shuts down cleanly.
    """
    proc = subprocess.Popen(cmd, env=env)
    stopped = []

    def forward(signum, _frame):
        stopped.append(signum)
        proc.send_signal(signal.SIGINT)  # streamlit's clean shutdown

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, forward)
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                stopped.append(signal.SIGINT)
        return 0 if stopped else code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:  # only if waiting itself failed
            proc.kill()
            proc.wait()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=int(os.environ.get("DETBENCH_PORT", DEFAULT_PORT)),
                        help=f"port on {HOST} (default {DEFAULT_PORT})")


def cmd_dashboard(args: argparse.Namespace) -> int:
    """The ``detbench dashboard`` subcommand (``args.db``, ``args.port``)."""
    return launch(args.db, args.port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detbench dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("DETBENCH_DB", "sqlite:///results.db"))
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_dashboard(args)
    except UserError as exc:
        print(f"detbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
