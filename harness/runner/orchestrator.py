"""Run a matrix: each cell in its own subprocess with a timeout, results to the store.

A crash, an out-of-memory kill or a hang fails only its cell, recorded with
the stage the worker had reached and the tail of its log; the matrix goes on.
The store holds every cell from the start (``pending``), so a killed run is
resumed by running what is not finished, and nothing is ever recorded twice.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from harness import __version__
from harness import matrix as mx
from harness.data.datasets import resolve_dataset
from harness.measure import provenance
from harness.runner.compare import compare_candidates, compare_run
from harness.runner.run_lock import hold_run_lock

LOG_TAIL_LINES = 60
_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    key: str
    status: str
    stage: Optional[str]
    error: Optional[str]
    duration_s: float
    warnings: list = field(default_factory=list)


@dataclass
class Plan:
    """A validated matrix, expanded: everything `detbench plan` shows and `run` records."""

    matrix: mx.Matrix
    text: str
    cells: list
    contracts: dict = field(default_factory=dict)  # model name -> resolved ONNX contract


def plan(matrix_path: str | Path) -> Plan:
    """Parse, validate and expand a matrix; reads files, writes nothing (user errors: UserError).

    ``detbench plan`` and ``detbench run`` both call this, so what one accepts the other runs.
    """
    m, text = mx.load(matrix_path)
    mx.check_files(m, str(matrix_path))
    box_types = mx.check_box_types(m, str(matrix_path))
    from harness.models import onnx_source

    contracts = onnx_source.check_matrix(m.models, str(matrix_path))
    cells = mx.expand(m)
    for cell in cells:  # what the cell's boxes are: its metrics, series and views follow
        cell["box_type"] = box_types[cell["model"]]
    _check_rotated(cells, box_types, str(matrix_path))
    onnx_source.apply_to_cells(cells, contracts)
    return Plan(m, text, cells, contracts)


def _check_rotated(cells: list[dict], box_types: dict, source: str) -> None:
    """Rotated models need mmrotate (+ e2cnn) installed, and end their graphs at the decode."""
    from harness.compat.mmrotate_compat import require
    from harness.trt.capability import refuse_rotated_in_graph_nms

    for name, kind in box_types.items():
        if kind == "rotated":
            require(f"{source}: model '{name}'")
    refuse_rotated_in_graph_nms(cells, source)


def create_run(store, matrix_path: str | Path, cache_dir: Path, planned: Plan | None = None) -> str:
    """Resolve a planned matrix's dataset and record a run with all its cells pending."""
    planned = planned or plan(matrix_path)
    m, text = planned.matrix, planned.text
    dataset = resolve_dataset(m.dataset, cache_dir, where=f"{matrix_path}: dataset")
    from harness.models import onnx_source

    onnx_source.check_classes(planned.contracts, m.models, dataset, str(matrix_path))
    cells = []
    for position, cell in enumerate(planned.cells):
        cell["dataset"] = dataset
        cells.append({"key": cell["key"], "position": position, "model": cell["model"],
                      "backend": cell["backend"], "precision": cell["precision"],
                      "batch": cell["batch"], "imgsz": cell["imgsz"], "device": cell["device"],
                      "nms": cell["nms"], "params": cell,
                      **({"status": "skipped", "error": cell["skip_reason"]}
                         if cell["skip_reason"] else {})})
    return store.create_run(
        name=m.name, matrix_path=str(Path(matrix_path).resolve()), matrix_hash=mx.matrix_hash(m),
        matrix_yaml=text, git_sha=provenance.git_sha(), detbench_version=__version__,
        environment=provenance.host_environment(), cells=cells)


def execute(store, run_id: str, cache_dir: Path, *, force: bool = False,
            on_event: Callable[[str, dict], None] = lambda kind, data: None,
            executor=None) -> list[Outcome]:
    """Run every unfinished cell of a run (every cell with ``force``), holding the run's lock.

    ``executor``: None runs the cells here, one after another; an executor from
    ``harness.runner.executors`` (e.g. Ray) runs them elsewhere and hands each
    result back, which is stored here, by this process only.

    A run another live process executes is refused (``RunLocked``, a UserError)
    before anything changes; a lock left by a dead process is taken over with a
    ``note`` event. Ctrl-C (or SIGTERM turned into KeyboardInterrupt by the CLI) kills
    the current worker, puts its cell back to ``pending`` and marks the run
    ``interrupted``, so ``--resume`` redoes exactly the unfinished cells.
    """
    with hold_run_lock(store, run_id, note=lambda text: on_event("note", {"text": text})) as lock:
        return _execute_locked(store, run_id, cache_dir, force=force, on_event=on_event,
                               lock=lock, executor=executor)


def _execute_locked(store, run_id: str, cache_dir: Path, *, force: bool,
                    on_event: Callable[[str, dict], None], lock, executor=None) -> list[Outcome]:
    todo = store.cells_to_run(run_id, force=force)
    on_event("start", {"total": len(todo)})
    outcomes = []
    current = None
    try:
        if executor is not None:
            outcomes.extend(executor.run(store, run_id, todo, cache_dir, on_event))
            todo = []
        for cell in todo:
            lock.check()
            on_event("cell", {"key": cell.key, "stage": "starting"})
            current = cell.id
            store.mark_running(cell.id)
            outcome = run_one(store, run_id, cell, cache_dir,
                              lambda stage, key=cell.key: on_event("cell", {"key": key, "stage": stage}))
            current = None
            outcomes.append(outcome)
            on_event("done", {"outcome": outcome})
        if compare_candidates(store.cells(run_id)):
            on_event("cell", {"key": "alignment with the PyTorch reference", "stage": "compare"})
        compare_run(store, run_id)
    except KeyboardInterrupt:
        if current is not None:
            store.mark_pending(current)
        store.finish_run(run_id, "interrupted")
        raise
    store.finish_run(run_id, "finished")
    return outcomes


def run_one(store, run_id: str, cell, cache_dir: Path, on_stage) -> Outcome:
    result = run_cell_process(work_dir_for(cache_dir, run_id, cell.key), dict(cell.params),
                              cache_dir, on_stage)
    store.record_result(cell.id, **_store_fields(result))
    return Outcome(cell.key, result["status"], result.get("stage"), result.get("error"),
                   result["duration_s"])


def work_dir_for(cache_dir: Path, run_id: str, key: str) -> Path:
    return cache_dir / "runs" / run_id / _safe(key)


def run_cell_process(work_dir: Path, params: dict, cache_dir: Path, on_stage,
                     env: Optional[dict] = None) -> dict:
    """One cell in a worker subprocess (with its timeout); the result dict, never raises for the cell."""
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "stage"):
        (work_dir / stale).unlink(missing_ok=True)
    params["cache_dir"] = str(cache_dir)
    (work_dir / "cell.json").write_text(json.dumps(params))
    started = time.time()
    code, timed_out = _spawn(work_dir, float(params.get("timeout_s", 900)), on_stage, env)
    result = _collect(work_dir, code, timed_out, params)
    result.setdefault("duration_s", time.time() - started)
    return result


def _spawn(work_dir: Path, timeout_s: float, on_stage, extra_env: Optional[dict] = None) -> tuple[int, bool]:
    env = {**os.environ, **(extra_env or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))}
    with open(work_dir / "log.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "harness.runner.worker", str(work_dir)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**env, "DETBENCH_PARENT_PID": str(os.getpid())},
                                start_new_session=True)
        deadline = time.monotonic() + timeout_s
        last_stage = None
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    _kill(proc)
                    return proc.wait(), True
                stage = _read(work_dir / "stage")
                if stage and stage != last_stage:
                    on_stage(stage)
                    last_stage = stage
                time.sleep(0.2)
        except BaseException:
            _kill(proc)
            raise
    return proc.returncode, False


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _collect(work_dir: Path, code: int, timed_out: bool, params: dict) -> dict:
    stage = _read(work_dir / "stage") or "load"
    tail = _tail(work_dir / "log.txt")
    if timed_out:
        return {"status": "failed", "stage": stage, "log_tail": tail,
                "error": f"timed out after {params.get('timeout_s')} s in stage '{stage}' "
                         "(raise `timeout_s` in the matrix if the cell is just slow)"}
    result_file = work_dir / "result.json"
    if code != 0 or not result_file.is_file():
        how = f"killed by signal {-code} ({_signame(-code)})" if code < 0 else f"exited with code {code}"
        return {"status": "failed", "stage": stage, "log_tail": tail,
                "error": f"worker process {how} in stage '{stage}'"}
    result = json.loads(result_file.read_text())
    if result["status"] != "ok":
        result["log_tail"] = tail
    return result


def _store_fields(r: dict) -> dict:
    keys = ("status", "stage", "error", "log_tail", "duration_s", "metrics", "latency",
            "latency_e2e", "telemetry", "provenance", "artifacts", "warnings", "samples",
            "class_ap", "telemetry_samples", "stage_times")
    return {k: r.get(k) for k in keys}


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return "unknown"


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").replace("\x00", "")  # PostgreSQL refuses NUL in text
        return "\n".join(text.splitlines()[-lines:])
    except OSError:
        return ""


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
