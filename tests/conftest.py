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
