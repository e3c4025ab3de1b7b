"""The Ray executor on CPU: one local Ray instance with two logical GPUs for the whole module.

``ray.init(address="local", num_cpus=2, num_gpus=2)``: GPU cells get their own ``CUDA_VISIBLE_DEVICES``;
a Ray worker killed mid-cell fails only that cell (with its stage); a driver killed
mid-run is resumed; the trained fixture through Ray gives the same cells, AP and
alignment as the local executor, and ``compare`` works on the driver's copies of
the files.  The Ray workers get their own cache directory (``DETBENCH_CACHE``), as a
remote node would, so nothing on the driver's side is shared with them by accident.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ray  # the `ray` extra is part of the install: a missing Ray fails here, loudly

from conftest import ROOT, has_module, run_cli
from harness.runner import orchestrator
from harness.runner.executors.ray_executor import RayExecutor, skip_reason
from harness.store import Store

needs_mmyolo = pytest.mark.skipif(not has_module("mmyolo"), reason="needs the mmyolo stack (extra 'mmyolo')")

TINY = """
name: tiny
models: [{name: yolov8_n, checkpoint: random}]
backends: [pytorch]
batch_sizes: BATCHES
image_sizes: [64]
devices: [DEVICE]
dataset: {synth: {images: 3, seed: 5, size: 96}}
timing: {warmup: 1, iterations: 3}
timeout_s: TIMEOUT
"""


def tiny(batches="[1, 2]", device="cpu", timeout=600) -> str:
    return TINY.replace("BATCHES", batches).replace("DEVICE", device).replace("TIMEOUT", str(timeout))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One Ray instance for the module (Ray is slow to start on 2 cores); its workers' cache apart."""
    node_cache = tmp_path_factory.mktemp("node_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # Ray >= 2.5x: token auth by default
        mp.setenv("RAY_worker_niceness", "0")  # as the executor's own local start: cells not niced
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        mp.setenv("DETBENCH_CACHE", str(node_cache))  # inherited by the Ray workers only
        ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
        mp.delenv("DETBENCH_CACHE")
        try:
            yield {"node_cache": node_cache, "address": ray.get_runtime_context().gcs_address}
        finally:
            ray.shutdown()


def start(tmp_path, text: str, name="m.yaml"):
    (tmp_path / name).write_text(text)
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    cache = tmp_path / "cache"
    return store, cache, orchestrator.create_run(store, tmp_path / name, cache)


# -- pure ------------------------------------------------------------------------------------------

def test_skip_reason_for_cells_no_node_can_run():
    cpu_only = [{"CPU": 8.0}]
    assert skip_reason("cpu", cpu_only, 1) is None
    assert "the Ray cluster has no GPU" in skip_reason("cuda", cpu_only, 1)
    assert "the Ray cluster has no GPU (0 node(s) alive" in skip_reason("cuda:1", [], 1)
    assert skip_reason("cuda", [{"CPU": 8.0}, {"CPU": 4.0, "GPU": 2.0}], 4) is None
    assert "has 4 CPUs" not in (skip_reason("cuda", [{"CPU": 4.0, "GPU": 1.0}], 6) or "")
    assert "(the largest has 4)" in skip_reason("cuda", [{"CPU": 16.0}, {"CPU": 4.0, "GPU": 1.0}], 6)


# -- on the module's Ray instance -------------------------------------------------------------------

@needs_mmyolo
def test_gpu_cells_get_distinct_gpus_and_the_cell_timeout_holds(cluster, tmp_path, monkeypatch):
    """Two GPU cells at once on two logical GPUs: each its own CUDA_VISIBLE_DEVICES.

    The cells hang in 'load' (fault injection, forwarded to the nodes as DETBENCH_* is) so
    they overlap for certain; the cell timeout ends them, recorded as in a local run.
    """
    monkeypatch.setenv("DETBENCH_FAULT", "@load:hang")
    monkeypatch.setenv("DETBENCH_DB", "postgresql+psycopg://bench:pw-never-on-a-node@db/results")
    store, cache, run_id = start(tmp_path, tiny(device="cuda", timeout=10))
    seen = {}
    spy = threading.Thread(target=_worker_environments, args=(cluster["node_cache"], seen), daemon=True)
    spy.start()
    outcomes = orchestrator.execute(store, run_id, cache, executor=RayExecutor())
    spy.join(timeout=5)
    assert len(outcomes) == 2
    # the cells' processes got the driver's DETBENCH_* settings, but never the store's URL
    assert len(seen) == 2 and all(env.get("DETBENCH_FAULT") == "@load:hang" for env in seen.values())
    assert not any("DETBENCH_DB" in env or "pw-never-on-a-node" in str(env) for env in seen.values())
    run_files = list((cluster["node_cache"] / "runs" / run_id).rglob("*"))
    assert run_files and not any("pw-never-on-a-node" in f.read_text(errors="replace")
                                 for f in run_files if f.is_file())
    cells = store.cells(run_id)
    assert [c.status for c in cells] == ["failed", "failed"]
    assert all(c.stage == "load" and "timed out after 10.0 s" in c.error for c in cells)
    nodes = [c.provenance["executor"] for c in cells]
    assert sorted(n["cuda_visible_devices"] for n in nodes) == ["0", "1"], nodes
    assert all(n["gpu_ids"] == [n["cuda_visible_devices"]] for n in nodes)
    assert all(n["planned_device"] == "cuda" and n["niceness"] == 0 for n in nodes)
    first, second = sorted(nodes, key=lambda n: n["started_at"])
    assert second["started_at"] < first["started_at"] + 10, "the two cells did not overlap"


@needs_mmyolo
def test_a_worker_killed_mid_cell_fails_only_that_cell(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("DETBENCH_FAULT", "/b2/@infer:hang")
    store, cache, run_id = start(tmp_path, tiny("[1, 2, 3]"))
    killed = {}
    killer = threading.Thread(target=_kill_ray_worker_of, args=("_b2_", cluster["node_cache"], killed),
                              daemon=True)
    killer.start()
    orchestrator.execute(store, run_id, cache, executor=RayExecutor())
    killer.join(timeout=5)
    assert killed.get("ray_worker"), killed
    cells = {c.batch: c for c in store.cells(run_id)}
    assert cells[2].status == "failed" and cells[2].stage == "infer", (cells[2].status, cells[2].error)
    assert "the Ray worker running the cell died" in cells[2].error
    assert "in stage 'infer'" in cells[2].error
    assert cells[1].status == cells[3].status == "ok"
    assert _gone(killed["cell_worker"]), "the cell's worker outlived its Ray worker"
    assert store.get_run(run_id).status == "finished"


def _gone(pid, timeout: float = 15.0) -> bool:
    """The process has ended (exited, or a zombie left for its reaper) within ``timeout``: the
    parent-death SIGKILL is delivered asynchronously, and a busy host can take a moment."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True
        if "\nState:\tZ" in state:
            return True
        time.sleep(0.2)
    return False


def _cell_workers(node_cache: Path):
    """(pid, argv) of every cell worker subprocess under the nodes' cache."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and b"harness.runner.worker" in argv and str(node_cache).encode() in argv[-2]:
            yield proc, argv


def _worker_environments(node_cache: Path, out: dict, timeout: float = 120) -> None:
    """The environment of each cell worker process that runs while we look."""
    deadline = time.time() + timeout
    while time.time() < deadline and len(out) < 2:
        for proc, _ in _cell_workers(node_cache):
            try:
                pairs = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            out[proc.name] = dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)
        time.sleep(0.2)


def _kill_ray_worker_of(key_part: str, node_cache: Path, out: dict, timeout: float = 300) -> None:
    """SIGKILL the Ray worker process whose cell (work dir containing key_part) reached 'infer'."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if b"harness.runner.worker" not in argv or key_part.encode() not in argv[-2]:
                    continue
                work_dir = Path(argv[-2].decode())
                if (work_dir / "stage").read_text().strip() != "infer":
                    continue
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                title = (Path(f"/proc/{parent}") / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            assert title.startswith(b"ray::"), title  # the Ray worker, not the driver
            assert str(node_cache) in str(work_dir)
            out.update(cell_worker=int(proc.name), ray_worker=parent)
            time.sleep(1.0)  # the task polls the stage file every 0.2 s, then reports it
            os.kill(parent, signal.SIGKILL)
            return
        time.sleep(0.2)


@needs_mmyolo
@pytest.mark.slow
def test_resume_after_the_driver_is_killed(cluster, tmp_path):
    """A `detbench run --executor ray` driver SIGKILLed mid-run; `--resume` finishes each cell once."""
    (tmp_path / "m.yaml").write_text(tiny("[1, 2, 3]"))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    args = ["run", "m.yaml", "--db", url, "--executor", "ray", "--address", cluster["address"]]
    # the b3 cell hangs in the first run, so the driver is surely killed mid-run (the other two
    # cells can finish before the kill on a fast host); --resume runs without the fault
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
           "DETBENCH_FAULT": "/b3/@infer:hang"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    run_id = _wait_for_first_ok(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    viewer = Store(url, readonly=True)
    before = {c.key: c.status for c in viewer.cells(run_id)}
    assert "ok" in before.values() and set(before.values()) - {"ok"}, before
    finished_before = {c.key: c.finished_at for c in viewer.cells(run_id) if c.status == "ok"}
    r = run_cli("run", "--resume", run_id, "--db", url, "--executor", "ray", "--address",
                cluster["address"], cwd=tmp_path, env={"RAY_AUTH_MODE": "disabled"})
    assert r.returncode == 0, r.stderr[-3000:]
    after = viewer.cells(run_id)
    assert sorted(c.key for c in after) == sorted(before) and all(c.status == "ok" for c in after)
    assert {c.key: c.finished_at for c in after if c.key in finished_before} == finished_before
    for c in after:  # the re-run cells kept no samples of the killed attempt
        assert len(viewer.latency_samples(c.id, "model")) == 3


def _wait_for_first_ok(tmp_path, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        try:
            store = Store(f"sqlite:///{tmp_path / 'results.db'}", readonly=True)
            run = store.get_run("latest")
            if any(c.status == "ok" for c in store.cells(run.id)):
                return run.id
        except Exception:  # noqa: BLE001 - the database or the run may not exist yet
            pass
        time.sleep(0.3)
    raise AssertionError("no cell finished in time")


@needs_mmyolo
@pytest.mark.slow
@pytest.mark.skipif(not has_module("onnxruntime"), reason="needs onnxruntime (extra 'onnx')")
def test_fixture_matrix_through_ray_equals_local(cluster, tmp_path):
    """The demo's trained fixture (PyTorch reference + ONNX Runtime, few images) run locally and
    through Ray: the same cells, statuses and AP, and the same alignment from the driver's files."""
    fixture = ROOT / "fixtures" / "yolov8_synth"
    text = (f"name: fixture\nmodels: [{{name: yolov8_synth, config: {fixture / 'config.py'}, "
            f"checkpoint: {fixture / 'yolov8_synth.pth'}}}]\n"
            "backends: [pytorch, onnxruntime]\nprecisions: [fp32]\nbatch_sizes: [1]\n"
            "image_sizes: [320]\ndevices: [cpu]\ndataset: {synth: {images: 6, seed: 2, size: 320}}\n"
            "timing: {warmup: 1, iterations: 3}\nalignment: {images: 6}\n")
    runs = {}
    for name, executor in (("local", None), ("ray", RayExecutor(cpus_per_cell=2))):
        (tmp_path / name).mkdir()
        store, cache, run_id = start(tmp_path / name, text)
        orchestrator.execute(store, run_id, cache, executor=executor)
        runs[name] = (store, run_id, cache)
    local, remote = ({c.key: c for c in s.cells(r)} for s, r, _ in runs.values())
    assert sorted(local) == sorted(remote)
    for key in local:
        assert (local[key].status, remote[key].status) == ("ok", "ok"), (key, remote[key].error)
        assert remote[key].metrics["AP"] == local[key].metrics["AP"], key
        assert remote[key].metrics["detections"] == local[key].metrics["detections"], key
    store, run_id, cache = runs["ray"]
    for cell in remote.values():  # the driver holds its own copies of the files compare reads
        for name in ("detections", "decoded", "decoded_metas"):
            path = Path(cell.artifacts[name])
            assert path.is_file() and str(cache) in str(path), (name, path)
        assert str(cluster["node_cache"]) in cell.provenance["executor"]["work_dir"]
    r = run_cli("compare", run_id, "--json", "--recompute", "--db", store.url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (ray_record,) = json.loads(r.stdout)["cells"]
    (local_record,) = store_alignments(*runs["local"][:2])
    assert ray_record["status"] == local_record["status"] == "ok"
    for field in ("reference_detections", "candidate_detections", "matched", "missing", "extra"):
        assert ray_record[field] == local_record[field], field
    assert ray_record["tensor"].get("available", True) and ray_record["tensor_boxes_max_abs_err"] is not None


def store_alignments(store, run_id):
    return list(store.alignments(run_id).values())


@needs_mmyolo
def test_a_cluster_without_gpus_skips_gpu_cells_at_once(cluster, tmp_path, monkeypatch):
    from harness.runner.executors import ray_executor

    monkeypatch.setattr(ray_executor, "_alive_nodes", lambda: [{"CPU": 2.0}])
    store, cache, run_id = start(tmp_path, tiny("[1]", device="cuda"))
    started = time.monotonic()
    orchestrator.execute(store, run_id, cache, executor=RayExecutor())
    (cell,) = store.cells(run_id)
    assert cell.status == "skipped" and "the Ray cluster has no GPU" in cell.error
    assert time.monotonic() - started < 120  # no waiting for a GPU that will never come


# -- the CLI's bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["ray://127.0.0.1:1", "127.0.0.1:1", "ray://nohost"])
def test_unreachable_ray_address_is_one_line_and_writes_nothing(tmp_path, address):
    (tmp_path / "m.yaml").write_text(tiny())
    r = run_cli("run", "m.yaml", "--executor", "ray", "--address", address, cwd=tmp_path,
                env={"RAY_AUTH_MODE": "disabled"}, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"--address {address}" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]


def test_address_without_the_ray_executor_is_refused(tmp_path):
    (tmp_path / "m.yaml").write_text(tiny())
    r = run_cli("run", "m.yaml", "--address", "auto", cwd=tmp_path)
    assert r.returncode == 2 and "--address auto is for --executor ray" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]


def test_a_waiting_cell_whose_last_fitting_node_left_is_skipped(monkeypatch):
    """A GPU cell still queued when the cluster's only GPU node leaves: skipped, its task cancelled."""
    from types import SimpleNamespace

    from harness.runner.executors import ray_executor

    cancelled, recorded = [], []
    monkeypatch.setattr(ray, "cancel", lambda ref, **kw: cancelled.append(ref))
    monkeypatch.setattr(ray_executor, "_alive_nodes", lambda: [{"CPU": 4.0}])
    store = SimpleNamespace(record_result=lambda cell_id, **kw: recorded.append((cell_id, kw)),
                            mark_running=lambda cell_id: pytest.fail("a skipped cell never ran"))
    executor = RayExecutor()
    executor._store, executor._run_id, executor._cache = store, "r1", Path("/nonexistent")
    executor._on_event, executor._outcomes = lambda kind, data: None, []
    waiting = ray_executor._Cell(SimpleNamespace(id=7, key="m/pytorch/fp32/b1/s64/cuda/nms-none",
                                                 device="cuda"))
    running = ray_executor._Cell(SimpleNamespace(id=8, key="k8", device="cuda"), running=True)
    pending = {"ref7": waiting, "ref8": running}
    executor._drop_infeasible(pending)
    assert cancelled == ["ref7"] and list(pending) == ["ref8"]  # a started cell is left to finish
    ((cell_id, result),) = recorded
    assert cell_id == 7 and result["status"] == "skipped" and "no GPU" in result["error"]


def test_a_node_regenerates_synthetic_data_and_names_missing_files(tmp_path):
    """What a node does before the cell: its own synthetic dataset; a missing file named with the node."""
    from harness.runner.executors.ray_task import localise

    params = {"device": "cuda:3", "model_spec": {"name": "yolov8_n", "checkpoint": "random"},
              "dataset": {"images": "/elsewhere/images", "annotations": "/elsewhere/annotations.json",
                          "limit": None, "synth": {"images": 2, "seed": 5, "size": 96}},
              "calibration": {"images": 2, "seed": 3, "source": None}}
    assert localise(params, tmp_path / "node", "gpu-7") is None
    assert params["device"] == "cuda:0"  # the one GPU Ray handed this task
    assert Path(params["dataset"]["annotations"]).is_file()
    assert str(tmp_path / "node") in params["dataset"]["images"]
    params["model_spec"]["checkpoint"] = str(tmp_path / "absent.pth")
    problem = localise(params, tmp_path / "node", "gpu-7")
    assert problem.startswith(f"model checkpoint '{tmp_path / 'absent.pth'}' is not on Ray node gpu-7")
