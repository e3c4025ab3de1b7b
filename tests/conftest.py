"""Shared fixtures: a small synthetic dataset and helpers to run the CLI in-process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Run ``detbench`` as a user would: a separate process, real exit code."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


#: ``detbench`` as a terminal starts it, whatever this test process's own signal state is: SIGINT
#: and SIGTERM unblocked, Python's Ctrl-C handler installed.  A child inherits ignored and blocked
#: signals through fork/exec (a Python child keeps SIGINT ignored), so a test that interrupts a
#: real run must not depend on what earlier tests or libraries left in the pytest process.
DETBENCH_AS_FROM_A_TERMINAL = [
    sys.executable, "-c",
    "import runpy, signal, sys\n"
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
    "sys.argv[0] = 'detbench'\n"
    "runpy.run_module('harness.cli', run_name='__main__', alter_sys=True)\n"]


def signal_state() -> str:
    """This process's SIGINT disposition and blocked signals (for a failing interruption test)."""
    import signal

    return (f"pytest process: SIGINT handler {signal.getsignal(signal.SIGINT)!r}, blocked "
            f"{sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))}")


@pytest.fixture(scope="session")
def synth_val(tmp_path_factory):
    """A small deterministic COCO dataset (images dir, annotations file)."""
    from harness.data.synth import generate

    out = tmp_path_factory.mktemp("synth_val")
    ann = generate(out, images=6, seed=2, size=320)
    return out / "images", ann


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
