"""The Ray executor: each cell one Ray task on a cluster; results stored by the driver only.

GPU cells ask for ``num_gpus=1`` in a fresh worker process (``max_calls=1``),
so CUDA/TensorRT state never outlives its cell; CPU cells ask for
``cpus_per_cell`` CPUs (Ray sets ``OMP_NUM_THREADS`` to that).  Tasks are never
retried (``max_retries=0``): a worker or node that dies fails its cell with
the stage it had reached (reported by the task as it goes), and the others go
on.  A cell no alive node can ever run (a GPU cell on a cluster without GPUs)
is skipped with the reason instead of waiting forever.  The driver (this
process) is the only writer of the store, so no node needs database access.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

from harness.errors import UserError
from harness.runner import orchestrator
from harness.runner.executors.ray_task import Progress, run_cell

PROBE_TIMEOUT_S = 5.0
NODE_RECHECK_S = 10.0
#: never forwarded to tasks: no store URL (it may hold credentials), no driver-local cache path
_PRIVATE_ENV = ("DETBENCH_DB", "DETBENCH_CACHE")


def connect(address: Optional[str]) -> None:
    """Join the Ray cluster at ``address`` (None: start one on this machine); UserError if not."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'detbench[ray]'") from None
    if ray.is_initialized():  # already connected by the caller (tests, notebooks)
        return
    where = f"--address {address}" if address else "a local Ray instance"
    if address and address != "auto":
        _probe(address)
    if not address:  # Ray nices its workers to 15 by default: a cell's timings compete at full priority
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:  # "local": a new instance here, never a stale cluster file's address (ray.init's default)
        ray.init(address=address or "local", log_to_driver=False, logging_level=logging.WARNING,
                 **({} if address else {"include_dashboard": False}))
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        hint = ("start one with `ray start --head` on this machine or give --address ray://HOST:10001"
                if address == "auto" else "check that the Ray head runs there")
        raise UserError(f"Ray cluster unreachable ({where}): {_first_line(exc)}; {hint}") from None


def _probe(address: str) -> None:
    """A refused or silent port fails in seconds (Ray itself waits 30 s or, for GCS, forever)."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise UserError(f"--address {address}: expected auto, ray://HOST:PORT or HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"Ray cluster unreachable (--address {address}): {host}:{port} does not "
                        f"answer ({exc.strerror or exc}); start the head with `ray start --head` "
                        "or fix --address") from None


def skip_reason(device: str, nodes: list[dict], cpus: float) -> Optional[str]:
    """Why no alive node can ever run a cell on ``device`` (None when one can)."""
    gpu = device.startswith("cuda")
    if any(n.get("CPU", 0) >= cpus and (not gpu or n.get("GPU", 0) >= 1) for n in nodes):
        return None
    if gpu and not any(n.get("GPU", 0) >= 1 for n in nodes):
        return (f"the Ray cluster has no GPU ({len(nodes)} node(s) alive, none with a GPU): "
                "join a GPU machine with `ray start --address HEAD:6379` or run the cell on cpu")
    most = max((n.get("CPU", 0) for n in nodes if not gpu or n.get("GPU", 0) >= 1), default=0)
    return (f"no Ray node{' with a GPU' if gpu else ''} has {cpus:g} CPUs for one cell "
            f"(the largest has {most:g}): lower --cpus-per-cell")


@dataclass
class _Cell:
    record: object
    stage: Optional[str] = None
    node: dict = field(default_factory=dict)
    running: bool = False


class RayExecutor:
    """``orchestrator.execute(..., executor=RayExecutor(...))`` runs the cells on Ray."""

    def __init__(self, address: Optional[str] = None, cpus_per_cell: float = 1.0,
                 poll_s: float = 0.25):
        if cpus_per_cell <= 0:
            raise UserError(f"--cpus-per-cell must be positive, got {cpus_per_cell:g}")
        self.address, self.cpus_per_cell, self.poll_s = address, cpus_per_cell, poll_s

    def connect(self) -> None:
        connect(self.address)

    def run(self, store, run_id: str, todo: list, cache_dir: Path,
            on_event: Callable[[str, dict], None]) -> list[orchestrator.Outcome]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.connect()
        self._store, self._run_id, self._cache, self._on_event = store, run_id, cache_dir, on_event
        self._outcomes: list[orchestrator.Outcome] = []
        self._progress_lost = False
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        progress = ray.remote(num_cpus=0, scheduling_strategy=here)(Progress).remote()
        pending = self._submit(todo, progress)
        try:
            self._wait(pending, progress)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            _quietly(ray.kill, progress)
        return self._outcomes

    # -- submission -----------------------------------------------------------

    def _submit(self, todo: list, progress) -> dict:
        import ray

        # max_calls can only be fixed when the remote function is made, not per call
        tasks = {"cpu": ray.remote(max_retries=0)(run_cell),
                 "gpu": ray.remote(num_gpus=1, max_calls=1, max_retries=0)(run_cell)}
        env = {k: v for k, v in os.environ.items()
               if k.startswith("DETBENCH_") and k not in _PRIVATE_ENV}
        nodes = _alive_nodes()
        pending = {}
        for cell in todo:
            reason = skip_reason(cell.device, nodes, self.cpus_per_cell)
            if reason:
                self._finish(_Cell(cell), {"status": "skipped", "error": reason, "duration_s": 0.0})
                continue
            task = tasks["gpu" if cell.device.startswith("cuda") else "cpu"]
            ref = task.options(num_cpus=self.cpus_per_cell, name=f"detbench:{cell.key}").remote(
                self._run_id, cell.id, cell.key, dict(cell.params), str(self._cache), env, progress)
            pending[ref] = _Cell(cell)
        return pending

    # -- the driver loop --------------------------------------------------------

    def _wait(self, pending: dict, progress) -> None:
        import ray

        by_id = {c.record.id: c for c in pending.values()}
        next_check = time.monotonic() + NODE_RECHECK_S
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=self.poll_s)
            for cell_id, kind, value in self._drain(progress):
                self._progress(by_id.get(cell_id), kind, value)
            for ref in ready:
                cell = pending.pop(ref)
                self._finish(cell, self._fetch(ref, cell))
            if time.monotonic() > next_check:
                self._drop_infeasible(pending)
                next_check = time.monotonic() + NODE_RECHECK_S

    def _drain(self, progress) -> list:
        """New stage reports; none if the progress actor is gone (its node died): cells go on."""
        import ray
        from ray.exceptions import RayError

        if self._progress_lost:
            return []
        try:
            return ray.get(progress.drain.remote())
        except RayError as exc:
            self._progress_lost = True
            print(f"detbench: stage reports lost ({type(exc).__name__}); cells keep running",
                  file=sys.stderr)
            return []

    def _progress(self, cell: Optional[_Cell], kind: str, value) -> None:
        if cell is None:
            return
        if kind == "started":
            cell.node = dict(value)
            self._mark_running(cell)
            self._on_event("cell", {"key": cell.record.key, "stage": f"starting on {value['host']}"})
        elif kind == "stage":
            cell.stage = value
            self._on_event("cell", {"key": cell.record.key, "stage": value})

    def _mark_running(self, cell: _Cell) -> None:
        if not cell.running:
            self._store.mark_running(cell.record.id)
            cell.running = True

    def _drop_infeasible(self, pending: dict) -> None:
        """Cells not started that no alive node can run any more (their node left): skipped."""
        import ray

        nodes = _alive_nodes()
        for ref, cell in list(pending.items()):
            reason = None if cell.running else skip_reason(cell.record.device, nodes, self.cpus_per_cell)
            if reason:
                ray.cancel(ref)
                del pending[ref]
                self._finish(cell, {"status": "skipped", "error": reason, "duration_s": 0.0})

    def _fetch(self, ref, cell: _Cell) -> dict:
        """The task's result, or a failed result naming what Ray reported and where."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as exc:  # a bug in the task code itself: loud, and recorded
            print(f"detbench: internal error running {cell.record.key} on Ray:\n{exc}", file=sys.stderr)
            return self._lost(cell, exc, "the Ray task raised")
        except RayError as exc:  # the worker process or its node died, or Ray lost the task
            return self._lost(cell, exc, _what_died(exc))

    def _lost(self, cell: _Cell, exc: BaseException, what: str) -> dict:
        stage = cell.stage or "load"
        where = f" on {cell.node['host']}" if cell.node.get("host") else ""
        return {"status": "failed", "stage": stage, "duration_s": _since(cell.node),
                "error": f"{what}{where} in stage '{stage}' ({type(exc).__name__}: "
                         f"{_first_line(exc)[:300]})",
                "log_tail": str(exc)[-4000:],
                "provenance": {"executor": cell.node or {"name": "ray"}}}

    def _finish(self, cell: _Cell, result: dict) -> None:
        record = cell.record
        if result["status"] != "skipped":
            self._mark_running(cell)
        result["artifacts"] = self._land_files(record.key, result.pop("files", {}),
                                               result.get("artifacts"))
        self._store.record_result(record.id, **orchestrator._store_fields(result))
        outcome = orchestrator.Outcome(record.key, result["status"], result.get("stage"),
                                       result.get("error"), float(result.get("duration_s") or 0.0))
        self._outcomes.append(outcome)
        self._on_event("done", {"outcome": outcome})

    def _land_files(self, key: str, files: dict, artifacts: Optional[dict]) -> Optional[dict]:
        """Write the shipped files under the driver's cache and point the artifacts at them."""
        if not files:
            return artifacts
        artifacts = dict(artifacts or {})
        work_dir = orchestrator.work_dir_for(self._cache, self._run_id, key)
        work_dir.mkdir(parents=True, exist_ok=True)
        for name, (filename, data) in files.items():
            target = work_dir / filename
            if not (target.is_file() and Path(artifacts.get(name, "")).resolve() == target.resolve()):
                tmp = target.with_name(target.name + ".tmp")
                tmp.write_bytes(data)
                tmp.replace(target)
            artifacts[name] = str(target)
        return artifacts


def _alive_nodes() -> list[dict]:
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def _what_died(exc: BaseException) -> str:
    names = {"WorkerCrashedError": "the Ray worker running the cell died",
             "NodeDiedError": "the Ray node running the cell died",
             "OutOfMemoryError": "Ray's memory monitor killed the cell's worker",
             "TaskCancelledError": "the Ray task was cancelled",
             "ObjectLostError": "Ray lost the cell's result",
             "OwnerDiedError": "Ray lost the cell's result"}
    return names.get(type(exc).__name__, "Ray could not run the cell")


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - cleanup of a cluster that may be gone already
        pass


def _since(node: dict) -> float:
    return max(0.0, time.time() - node["started_at"]) if node.get("started_at") else 0.0


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
