"""The pre-imported worker (zygote): one forked process per cell, isolation as with spawned workers.

The zygote imports torch/mmengine/mmdet/mmyolo once per run and forks each cell's worker; a
crash ends only its cell, Ctrl-C/SIGTERM take the cell and the zygote down, CUDA is never
initialised in the zygote, and a zygote that cannot start leaves the run to spawned workers.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from conftest import ROOT, has_module, run_cli

needs_mmyolo = pytest.mark.skipif(not has_module("mmyolo"), reason="needs the mmyolo stack (extra 'mmyolo')")

MATRIX = """
name: zygote
models: [{name: yolov8_n, checkpoint: random}]
backends: [pytorch]
batch_sizes: [BATCHES]
image_sizes: [64]
dataset: {synth: {images: 2, seed: 5, size: 96}}
timing: {warmup: 0, iterations: 2, e2e: false}
alignment: {images: 0}
timeout_s: 600
"""


def _matrix(tmp_path: Path, batches: str) -> None:
    (tmp_path / "m.yaml").write_text(MATRIX.replace("BATCHES", batches))


def _cells(tmp_path: Path):
    from harness.store import Store

    store = Store(f"sqlite:///{tmp_path / 'results.db'}", readonly=True)
    run = store.get_run("latest")
    return run, {c.batch: c for c in store.cells(run.id)}


def _run_dir(tmp_path: Path, run_id: str) -> Path:
    return tmp_path / ".detbench" / "runs" / run_id


def _zygote_info(run_dir: Path) -> dict:
    line = next(line for line in (run_dir / "zygote.log").read_text().splitlines()
                if line.startswith("[detbench] zygote "))
    return json.loads(line.removeprefix("[detbench] zygote "))


def _pid_of(run_dir: Path, batch: int) -> int:
    (cell_dir,) = [d for d in run_dir.iterdir() if d.is_dir() and f"_b{batch}_" in d.name]
    return int((cell_dir / "pid").read_text())


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@needs_mmyolo
def test_forked_cells_are_distinct_processes_and_a_crash_fails_only_its_cell(tmp_path):
    """b1 calls _exit in load, b2 segfaults in infer, b3 runs: three children of one zygote."""
    _matrix(tmp_path, "1, 2, 3")
    r = run_cli("run", "m.yaml", cwd=tmp_path,
                env={"DETBENCH_FAULT": "/b1/@load:exit,/b2/@infer:segv"}, timeout=900)
    assert r.returncode == 3, r.stderr
    run, cells = _cells(tmp_path)
    assert cells[1].status == "failed" and cells[1].stage == "load"
    assert "exited with code 7 in stage 'load'" in cells[1].error
    assert cells[2].status == "failed" and cells[2].stage == "infer"
    assert "killed by signal 11 (SIGSEGV) in stage 'infer'" in cells[2].error
    assert "[detbench] stage infer" in cells[2].log_tail
    assert cells[3].status == "ok", cells[3].error
    run_dir = _run_dir(tmp_path, run.id)
    zygote = _zygote_info(run_dir)
    assert zygote["ok"] and zygote["cuda_initialized"] is False
    assert {"torch", "prepare_mm", "harness.backends.pytorch"} <= set(zygote["preloaded"])
    worker = cells[3].provenance["worker"]
    assert worker["start"] == "forkserver" and worker["parent_pid"] == zygote["pid"]
    pids = [_pid_of(run_dir, b) for b in (1, 2, 3)]
    assert len(set(pids + [zygote["pid"]])) == 4, pids  # each cell its own process
    assert worker["pid"] == pids[2]
    assert "had died" not in r.stderr  # the crashes did not take the zygote with them
    assert not _alive(zygote["pid"]), "the zygote outlived its run"


@needs_mmyolo
def test_sigterm_ends_the_forked_cell_and_the_zygote_and_resume_redoes_it(tmp_path):
    _matrix(tmp_path, "1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "DETBENCH_FAULT": "@load:hang"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "m.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not pids:
            assert proc.poll() is None, proc.communicate()
            pid_files = list(tmp_path.glob(".detbench/runs/*/*/pid"))
            stage = list(tmp_path.glob(".detbench/runs/*/*/stage"))
            if pid_files and stage and stage[0].read_text() == "load":
                run_dir = pid_files[0].parent.parent
                pids = [int(pid_files[0].read_text()), _zygote_info(run_dir)["pid"]]
            time.sleep(0.2)
        assert pids, "the cell never reached load"
        assert all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "the forked worker or the zygote survived SIGTERM"
    run, cells = _cells(tmp_path)
    assert run.status == "interrupted" and cells[1].status == "pending"
    r = run_cli("run", "--resume", run.id, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    _, cells = _cells(tmp_path)
    assert cells[1].status == "ok" and cells[1].provenance["worker"]["start"] == "forkserver"


@needs_mmyolo
def test_a_zygote_that_dies_before_it_is_ready_leaves_the_run_to_spawned_workers(tmp_path):
    _matrix(tmp_path, "1")
    r = run_cli("run", "m.yaml", cwd=tmp_path, env={"DETBENCH_FAULT": "@zygote:abort"}, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "the pre-imported worker (zygote) could not start: it exited with code -6" in r.stderr
    _, cells = _cells(tmp_path)
    assert cells[1].status == "ok" and cells[1].provenance["worker"]["start"] == "spawn"


@needs_mmyolo
def test_the_zygote_imports_the_stack_without_initialising_cuda(tmp_path):
    """On a GPU host too: torch, mmyolo's registries and the config are ready, CUDA is not."""
    from harness.models.table import packaged_config
    from harness.runner.zygote import Zygote, preload_spec

    cell = {"backend": "pytorch", "eval": {}, "model_spec": {"name": "yolov8_n", "config": None}}
    spec = preload_spec([cell])
    assert spec["configs"] == [str(packaged_config("yolov8_n"))]
    zygote = Zygote(tmp_path, spec)
    try:
        ok, why = zygote.start()
        assert ok, why
        info = zygote.info
        assert {"torch", "mmengine.config", "prepare_mm", spec["configs"][0]} <= set(info["preloaded"])
        assert info["missing"] == {}
        assert info["cuda_initialized"] is False and info["nvidia_device_files"] == []
        assert _alive(info["pid"])
    finally:
        zygote.close()
    assert not _alive(info["pid"])


def test_readiness_refuses_a_zygote_whose_imports_initialised_cuda():
    from harness.runner.zygote import readiness

    def fake_torch(initialised: bool):
        return types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: initialised))

    assert readiness({"torch": fake_torch(False)}, [])["ok"] is True
    refused = readiness({"torch": fake_torch(True)}, [])
    assert refused["ok"] is False and "CUDA was initialised" in refused["reason"]
    assert readiness({}, [])["ok"] is True  # no torch: nothing to initialise
    driver = readiness({"torch": fake_torch(False)}, ["/dev/nvidiactl"])  # e.g. NVML or cuInit
    assert driver["ok"] is False and "/dev/nvidiactl" in driver["reason"]


def test_worker_start_setting(monkeypatch):
    from harness.errors import UserError
    from harness.runner.orchestrator import _Launcher
    from harness.runner.zygote import start_method

    assert start_method({}) == "forkserver"
    assert start_method({"DETBENCH_WORKER_START": "spawn"}) == "spawn"
    with pytest.raises(UserError, match="DETBENCH_WORKER_START='fork'"):
        start_method({"DETBENCH_WORKER_START": "fork"})
    monkeypatch.setenv("DETBENCH_WORKER_START", "spawn")
    launcher = _Launcher(Path("/nonexistent"), [], lambda kind, data: None)
    assert launcher.get() is None  # every cell spawns `python -m harness.runner.worker`


def test_preload_spec_leaves_onnxruntime_to_cuda_cells():
    """ONNX Runtime's CUDA libraries must load after torch's CUDA (in the cell), never in the zygote."""
    from harness.runner.zygote import preload_spec

    cpu = {"backend": "onnxruntime", "device": "cpu", "eval": {"evaluator": "faster-coco-eval"},
           "model_spec": {"name": "m", "onnx": {"path": "m.onnx"}}}
    cuda = {**cpu, "device": "cuda:0"}
    assert "onnxruntime" in preload_spec([cpu])["modules"]
    assert "faster_coco_eval" in preload_spec([cpu])["modules"]
    assert "onnxruntime" not in preload_spec([cpu, cuda])["modules"]
    assert preload_spec([cpu])["configs"] == []  # an ONNX model has no mmyolo config


def test_cuda_questions_at_import_time_are_answered_by_a_helper_process():
    """mmengine/mmcv ask torch.cuda.is_available()/device_count() while they import: in the zygote
    a helper process answers (a CUDA call there would break every forked child's CUDA)."""
    torch = pytest.importorskip("torch")
    from harness.runner.zygote import _CudaAnswers

    real = (torch.cuda.is_available, torch.cuda.device_count)
    answers = _CudaAnswers()
    answers.proc = subprocess.Popen([sys.executable, "-c", "print(1, 3)"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)  # stands in for the query
    answers.install(torch)
    try:
        assert torch.cuda.is_available() is True and torch.cuda.device_count() == 3
        assert not torch.cuda.is_initialized()
    finally:
        answers.uninstall()
    assert (torch.cuda.is_available, torch.cuda.device_count) == real
    assert answers.report()["answer"] == (True, 3)
    broken = _CudaAnswers()
    broken.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    broken.install(torch)
    try:  # no answer: the real functions answer (and readiness() would see what they did)
        assert torch.cuda.is_available() == real[0]()
    finally:
        broken.uninstall()
    assert broken.report()["error"].startswith("exit 1")


def test_the_preload_reads_the_packaged_config_of_a_rotated_model_named_without_config(tmp_path):
    from harness import matrix as mx
    from harness.runner.zygote import preload_spec

    (tmp_path / "r.yaml").write_text(
        "name: r\nmodels: [{name: rtmdet_r_tiny, checkpoint: random}]\nbackends: [pytorch]\n"
        "precisions: [fp32]\nbatch_sizes: [1]\nimage_sizes: [128]\ndevices: [cpu]\n"
        "dataset: {synth: {images: 2, seed: 2, size: 128, rotated: true}}\n")
    m, _ = mx.load(tmp_path / "r.yaml")
    assert any("rtmdet-r_tiny" in c for c in preload_spec(mx.expand(m))["configs"])
