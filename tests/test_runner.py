"""The orchestrator: isolation of failing cells, resume after SIGKILL, exit codes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, has_module, run_cli

pytestmark = pytest.mark.skipif(not has_module("mmyolo"), reason="needs the mmyolo stack (extra 'mmyolo')")

MATRIX = """
name: tiny
models: [{name: yolov8_n, checkpoint: random}]
backends: [pytorch]
batch_sizes: [1, 2, 3]
image_sizes: [64]
dataset: {synth: {images: 3, seed: 5, size: 96}}
timing: {warmup: 1, iterations: 3}
"""


@pytest.fixture
def workspace(tmp_path):
    (tmp_path / "m.yaml").write_text(MATRIX)
    return tmp_path


def open_store(path):
    from harness.store import Store

    return Store(f"sqlite:///{path}/results.db", readonly=True)


def test_aborting_cell_is_recorded_failed_with_stage_and_others_finish(workspace):
    r = run_cli("run", "m.yaml", cwd=workspace, env={"DETBENCH_FAULT": "/b2/@infer:abort"})
    assert r.returncode == 3, r.stderr
    store = open_store(workspace)
    cells = store.cells(store.get_run("latest").id)
    by_batch = {c.batch: c for c in cells}
    assert by_batch[2].status == "failed"
    assert by_batch[2].stage == "infer"
    assert "SIGABRT" in by_batch[2].error
    assert "[detbench] stage infer" in by_batch[2].log_tail
    assert by_batch[1].status == by_batch[3].status == "ok"


@pytest.mark.slow  # waits out a 40 s cell timeout (the slow tier); Ray's: tests/test_ray.py, default suite
def test_hanging_cell_times_out(workspace):
    (workspace / "m.yaml").write_text(MATRIX.replace("[1, 2, 3]", "[1]") + "timeout_s: 40\n")
    r = run_cli("run", "m.yaml", cwd=workspace, env={"DETBENCH_FAULT": "@eval:hang"})
    assert r.returncode == 3
    store = open_store(workspace)
    (cell,) = store.cells(store.get_run("latest").id)
    assert cell.status == "failed" and cell.stage == "eval" and "timed out" in cell.error


def test_sigkill_mid_matrix_then_resume_runs_each_cell_exactly_once(workspace):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "m.yaml"], cwd=workspace,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    run_id = _wait_for_first_ok(workspace, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = open_store(workspace)
    before = {c.key: c.status for c in store.cells(run_id)}
    assert "ok" in before.values() and set(before.values()) - {"ok"}, before  # killed mid-matrix
    r = run_cli("run", "--resume", run_id, cwd=workspace)
    assert r.returncode == 0, r.stderr
    after = store.cells(run_id)
    assert sorted(c.key for c in after) == sorted(before)  # every cell exactly once
    assert all(c.status == "ok" for c in after)
    for c in after:  # no duplicated samples from the re-run cell
        assert len(store.latency_samples(c.id, "model")) == 3
    ok_before = [k for k, s in before.items() if s == "ok"]
    untouched = {c.key: c.finished_at for c in after if c.key in ok_before}
    r = run_cli("run", "--resume", run_id, cwd=workspace)  # nothing left: no cell is redone
    assert r.returncode == 0
    assert {c.key: c.finished_at for c in store.cells(run_id) if c.key in ok_before} == untouched


def _wait_for_first_ok(workspace, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if (workspace / "results.db").exists():
            try:
                store = open_store(workspace)
                run = store.get_run("latest")
                if any(c.status == "ok" for c in store.cells(run.id)):
                    return run.id
            except Exception:  # the run row may not exist yet
                pass
        time.sleep(0.3)
    raise AssertionError("no cell finished in time")
