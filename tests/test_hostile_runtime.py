"""Hostile inputs at run time: bad checkpoint bytes, corrupted caches, a second executor of a run.

Each table below is the place to add the next case.  The contract: a user error
is one line naming the value and the fix; a cell-level problem fails the cell at
the right stage with a short reason (library text to the log tail); a corrupted
cache entry heals itself with a recorded warning; a live run is never executed
twice, and a lock left by a dead process is taken over with a note.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

PG_URL = os.environ.get("DETBENCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


# ------------------------------------------------------------------------------------------ stores

def _postgres_or_skip() -> str:
    """A fresh PostgreSQL database on the CI server; skip only outside CI when none answers."""
    try:
        import psycopg  # noqa: F401
        from sqlalchemy import create_engine, text

        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = f"detbench_hostile_{uuid.uuid4().hex[:10]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:
        if IN_CI:
            raise
        pytest.skip(f"no PostgreSQL at {PG_URL} ({type(exc).__name__}: {str(exc)[:120]}); "
                    "CI runs this with the server")
    return name


def _drop_postgres(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    name = _postgres_or_skip()
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    _drop_postgres(name)


def _new_run(url: str) -> str:
    from harness.store import Store

    cell = dict(key="m/pytorch/fp32/b1", position=0, model="m", backend="pytorch", precision="fp32",
                batch=1, imgsz=160, device="cpu", nms="none", params={})
    with Store(url) as store:
        return store.create_run(name="lock", matrix_path=None, matrix_hash="h", matrix_yaml="",
                                git_sha=None, detbench_version="0", environment={}, cells=[cell])


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}


# ------------------------------------------------------------------------------------ the run lock

HOLD = textwrap.dedent("""
    import sys, time
    from harness.store import Store
    from harness.runner.run_lock import this_process
    store = Store(sys.argv[1], create=False)
    store.lock_run(sys.argv[2], this_process(), stale_after_s=120)
    print("locked", flush=True)
    time.sleep(600)
""")

RACE = textwrap.dedent("""
    import sys, time
    from harness.store import Store
    from harness.store.locks import RunLocked
    from harness.runner.run_lock import this_process
    store = Store(sys.argv[1], create=False)
    time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
    try:
        store.lock_run(sys.argv[2], this_process(), stale_after_s=120)
        print("won", flush=True)
    except RunLocked as exc:
        print("refused", exc, flush=True)
    time.sleep(5)  # keep the lock's pid alive until every racer has tried
""")


def _holder_process(url: str, run_id: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, url, run_id], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _other_host(age_s: float):
    """A holder on another host whose heartbeat is ``age_s`` old."""
    from harness.store.cells import now
    from harness.store.locks import LockHolder

    return LockHolder("elsewhere.example", 4242, uuid.uuid4().hex, now() - timedelta(seconds=age_s))


def _plant(url: str, run_id: str, holder) -> None:
    from sqlalchemy import create_engine, update

    from harness.store.schema import Run

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id).values(
            lock_token=holder.token, lock_host=holder.host, lock_pid=holder.pid,
            lock_heartbeat_at=holder.heartbeat_at))
    engine.dispose()


#: (id, who holds the run when a second process asks, expected: "refused" or a takeover reason)
LOCK_CASES = [
    ("live-process-same-host", "live", "refused"),
    ("killed-process-same-host", "killed", "no longer exists"),
    ("other-host-fresh-heartbeat", "other-fresh", "refused"),
    ("other-host-stale-heartbeat", "other-stale", "last heartbeat was"),
    ("free", "nobody", None),
]


@pytest.mark.parametrize("holder_kind,expected", [c[1:] for c in LOCK_CASES],
                         ids=[c[0] for c in LOCK_CASES])
def test_run_lock_table(db_url, holder_kind, expected):
    from harness.runner.run_lock import this_process
    from harness.store import Store
    from harness.store.locks import RunLocked

    run_id = _new_run(db_url)
    proc = None
    if holder_kind in ("live", "killed"):
        proc = _holder_process(db_url, run_id)
        if holder_kind == "killed":
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    elif holder_kind.startswith("other"):
        _plant(db_url, run_id, _other_host(5 if holder_kind == "other-fresh" else 3600))
    me = this_process()
    try:
        with Store(db_url) as store:
            if expected == "refused":
                with pytest.raises(RunLocked) as refused:
                    store.lock_run(run_id, me, stale_after_s=120)
                message = str(refused.value)
                assert "\n" not in message and run_id in message
                pid, host = (proc.pid, socket.gethostname()) if proc else (4242, "elsewhere.example")
                assert f"pid {pid} on host {host}" in message
                assert store.run_lock_holder(run_id).pid == pid  # untouched
                return
            takeover = store.lock_run(run_id, me, stale_after_s=120)
            if expected is None:
                assert takeover is None
            else:
                assert expected in takeover.reason
            assert store.run_lock_holder(run_id).token == me.token
            assert store.heartbeat_run_lock(run_id, me.token)
            assert store.unlock_run(run_id, me.token)
            assert store.run_lock_holder(run_id) is None
            assert not store.heartbeat_run_lock(run_id, me.token)  # released: no longer ours
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_lock_race_has_one_winner(db_url):
    """Four processes ask for the same free run at the same instant: exactly one gets it."""
    run_id = _new_run(db_url)
    start = time.time() + 4.0
    procs = [subprocess.Popen([sys.executable, "-c", RACE, db_url, run_id, str(start)], env=_env(),
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    lines = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(line.split()[0] for line in lines) == ["refused"] * 3 + ["won"], lines


def test_a_taken_over_lock_stops_the_executor_before_its_next_cell(db_url):
    """If our heartbeat was so late that another process took the run over, we stop."""
    from harness.errors import UserError
    from harness.runner.run_lock import hold_run_lock
    from harness.store import Store

    run_id = _new_run(db_url)
    with Store(db_url) as store:
        with hold_run_lock(store, run_id, heartbeat_s=0.1) as held:
            held.check()  # ours: nothing happens
            intruder = _other_host(0)
            _plant(db_url, run_id, intruder)
            deadline = time.monotonic() + 30
            while not held.lost and time.monotonic() < deadline:
                time.sleep(0.1)
            with pytest.raises(UserError, match=f"run {run_id}: another process took over"):
                held.check()
        assert store.run_lock_holder(run_id).token == intruder.token  # not released: not ours


LOCK_MATRIX = """
name: lock
models: [{name: yolov8_n, checkpoint: random}]
backends: [pytorch]
precisions: [fp32]
batch_sizes: [1]
image_sizes: [160]
dataset: {synth: {images: 2, seed: 1, size: 160}}
timing: {warmup: 0, iterations: 1, e2e: false}
timeout_s: 600
"""


def _ended(proc: subprocess.Popen) -> None:
    from tests.conftest import signal_state

    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        raise AssertionError(f"the signalled run did not end within 60 s; {signal_state()}; its "
                             f"stderr so far: {exc.stderr!r}") from exc


def _start_run(args, cwd, fault: str) -> subprocess.Popen:
    from tests.conftest import DETBENCH_AS_FROM_A_TERMINAL

    env = {**_env(), "DETBENCH_FAULT": fault}
    return subprocess.Popen([*DETBENCH_AS_FROM_A_TERMINAL, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_running(url: str, pid: int, proc: subprocess.Popen) -> str:
    """The run id once ``pid`` holds a run's lock and a cell is running."""
    from harness.store import Store

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with Store(url, create=False) as store:
                for run in store.list_runs():
                    holder = store.run_lock_holder(run.id)
                    if holder and holder.pid == pid and store.cells(run.id, status="running"):
                        return run.id
        except Exception:  # the first process is still creating the database
            pass
        time.sleep(0.5)
    raise AssertionError("the first `detbench run` never started its cell")


def test_resume_of_a_live_run_is_refused_then_a_dead_ones_is_taken_over(db_url, tmp_path):
    """Two real `detbench run` processes: refusal while the first lives, release on SIGTERM,
    takeover (with a note) after a SIGKILL."""
    (tmp_path / "m.yaml").write_text(LOCK_MATRIX)
    cache = str(tmp_path / "cache")
    first = _start_run(["run", "m.yaml", "--db", db_url, "--cache-dir", cache], tmp_path,
                       "yolov8_n@load:hang")
    run_id = _wait_for_running(db_url, first.pid, first)

    second = run_cli("run", "--resume", run_id, "--db", db_url, "--cache-dir", cache, cwd=tmp_path,
                     timeout=120)
    assert second.returncode == 2
    assert second.stderr.strip().count("\n") == 0, second.stderr
    assert run_id in second.stderr and f"pid {first.pid} on host {socket.gethostname()}" in \
        second.stderr and "Traceback" not in second.stderr

    first.send_signal(signal.SIGTERM)  # a terminated executor releases the lock
    _ended(first)
    from harness.store import Store

    with Store(db_url, create=False) as store:
        assert store.run_lock_holder(run_id) is None

    interrupted = _start_run(["run", "--resume", run_id, "--db", db_url, "--cache-dir", cache],
                             tmp_path, "yolov8_n@load:hang")
    _wait_for_running(db_url, interrupted.pid, interrupted)
    interrupted.send_signal(signal.SIGINT)  # Ctrl-C releases it too
    _ended(interrupted)
    with Store(db_url, create=False) as store:
        assert store.run_lock_holder(run_id) is None

    again = _start_run(["run", "--resume", run_id, "--db", db_url, "--cache-dir", cache], tmp_path,
                       "yolov8_n@load:hang")
    _wait_for_running(db_url, again.pid, again)
    again.send_signal(signal.SIGKILL)  # no chance to release: the lock stays, its pid is gone
    _ended(again)
    with Store(db_url, create=False) as store:
        assert store.run_lock_holder(run_id).pid == again.pid

    third = run_cli("run", "--resume", run_id, "--db", db_url, "--cache-dir", cache, cwd=tmp_path,
                    env={"DETBENCH_FAULT": "yolov8_n@load:raise"}, timeout=300)
    assert third.returncode == 3, third.stderr  # it ran: the cell failed by the injected fault
    assert f"took over the lock of pid {again.pid} on host {socket.gethostname()}" in third.stderr
    with Store(db_url, create=False) as store:
        assert store.run_lock_holder(run_id) is None
        assert [c.status for c in store.cells(run_id)] == ["failed"]


# ---------------------------------------------------------------------------------- busy host

SPIN = "import time\nend = time.time() + 120\nwhile time.time() < end: pass\n"


def test_a_competing_busy_process_fires_the_host_warning():
    """A real spinning process during a 'timed loop': recorded, and the warning fires."""
    pytest.importorskip("psutil", reason="psutil is a dependency (extra host); install.sh installs it")
    from harness.measure.host import HostSampler, contention_warnings

    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(0.5)
        with HostSampler(interval_s=0.1) as host:
            time.sleep(2.0)  # the measured process itself stays idle
        summary = host.summary()
    finally:
        spinner.kill()
        spinner.wait()
    assert summary["samples"] >= 10 and summary["cpu_count"] == os.cpu_count()
    assert summary["other_cores_avg"] > 0.5, summary
    import psutil

    assert len(summary["cpu_percent_avg"]) == psutil.cpu_count()
    warnings = contention_warnings(summary)
    assert warnings and warnings[0].startswith("host busy during timing: other processes used")
    shares = {p["pid"]: p["cores"] for p in summary["top_other_processes"]}
    assert spinner.pid in shares or len(shares) == 5, summary["top_other_processes"]


def _recorded(other_avg, load, cpus=2, top=()):
    return {"samples": 40, "cpu_count": cpus, "other_cores_avg": other_avg, "load1_max": load,
            "top_other_processes": list(top)}


#: (id, recorded host summary, expected warning prefixes)
HOST_CASES = [
    ("quiet", _recorded(0.03, 0.9), []),
    ("just-below-limit", _recorded(0.19, 1.5), []),
    ("competing-run", _recorded(1.42, 1.9, top=[{"pid": 7, "name": "python3", "cores": 0.98}]),
     ["host busy during timing"]),
    ("overloaded", _recorded(0.1, 3.4), ["host overloaded during timing"]),
    ("both", _recorded(2.0, 6.0, cpus=4), ["host busy", "host overloaded"]),
    ("no-samples", {"samples": 0}, []),
]


@pytest.mark.parametrize("summary,expected", [c[1:] for c in HOST_CASES], ids=[c[0] for c in HOST_CASES])
def test_host_contention_decision(summary, expected):
    from harness.measure.host import contention_warnings

    warnings = contention_warnings(summary)
    assert len(warnings) == len(expected)
    for warning, prefix in zip(warnings, expected):
        assert warning.startswith(prefix) and "\n" not in warning
    if expected and summary.get("top_other_processes"):
        assert "python3 (pid 7) 0.98" in warnings[0]


@pytest.mark.parametrize("model,e2e,fires", [(30.0, 29.0, True), (30.0, 30.0, False), (30.0, 41.0, False),
                                             (None, 3.0, False)])
def test_e2e_median_below_model_median_is_flagged(model, e2e, fires):
    from harness.measure.host import impossible_e2e_warning

    assert bool(impossible_e2e_warning(model, e2e)) is fires


# -------------------------------------------------------------------------------- checkpoints

FIXTURE = ROOT / "fixtures" / "yolov8_synth"


class _NotAllowed:  # a class weights_only=True refuses to unpickle
    pass


def _ckpt_zero(tmp):
    path = tmp / "zero.pth"
    path.write_bytes(b"")
    return path


def _ckpt_random(tmp):
    path = tmp / "random.pth"
    path.write_bytes(bytes(range(7, 256)) * 40)
    return path


def _ckpt_onnx(tmp):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp / "model.pth"  # an ONNX file under a checkpoint's name
    onnx.save(helper.make_model(graph, producer_name="pytorch"), str(path))
    return path


def _ckpt_truncated_zip(tmp):
    import torch

    path = tmp / "cut.pth"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _ckpt_zip_without_pickle(tmp):
    import zipfile

    path = tmp / "other.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")
    return path


def _ckpt_damaged_pickle(tmp):
    path = tmp / "legacy.pth"
    path.write_bytes(b"\x80\x02" + bytes(range(200, 256)) * 10)
    return path


def _ckpt_pickled_object(tmp):
    import torch

    path = tmp / "full.pth"
    torch.save({"state_dict": {}, "hub": _NotAllowed()}, str(path))
    return path


#: (id, make the file, reason found at plan time (None: only torch.load can tell), reason at load)
CHECKPOINT_CASES = [
    ("zero-bytes", _ckpt_zero, "is empty (0 bytes)", "is empty (0 bytes)"),
    ("random-bytes", _ckpt_random, "not a PyTorch checkpoint: unknown format", "unknown format"),
    ("onnx-file", _ckpt_onnx, "looks like an ONNX model", "looks like an ONNX model"),
    ("truncated-zip", _ckpt_truncated_zip, "zip archive is truncated or damaged", "truncated"),
    ("zip-without-data-pkl", _ckpt_zip_without_pickle, "without data.pkl", "without data.pkl"),
    ("damaged-legacy-pickle", _ckpt_damaged_pickle, None, "damaged or not a PyTorch checkpoint"),
    ("pickle-refused-by-weights-only", _ckpt_pickled_object, None, "trust_checkpoint: true"),
]


@pytest.mark.parametrize("make,at_plan,at_load", [c[1:] for c in CHECKPOINT_CASES],
                         ids=[c[0] for c in CHECKPOINT_CASES])
def test_checkpoint_table(tmp_path, make, at_plan, at_load):
    pytest.importorskip("torch", reason="torch.load is what reads checkpoints (extra mmyolo)")
    from harness.errors import UserError
    from harness.models import checkpoint

    path = make(tmp_path)
    found = checkpoint.sniff(path)
    assert (found is None) if at_plan is None else (at_plan in found), found
    with pytest.raises(UserError) as refused:
        checkpoint.load(path, trust_checkpoint=False)
    message = str(refused.value)
    assert at_load in message and "\n" not in message and len(message) < 400, message
    # the unsafe setting is advised only for a valid pickle that weights_only refused
    assert ("trust_checkpoint" in message) is (make is _ckpt_pickled_object)


def test_bad_checkpoint_is_refused_before_any_cell_runs(tmp_path):
    """Plan-time: `detbench run` names the matrix path and the reason, exit 2, no traceback."""
    bad = _ckpt_onnx(tmp_path)
    (tmp_path / "m.yaml").write_text(LOCK_MATRIX.replace(
        "{name: yolov8_n, checkpoint: random}", f"{{name: yolov8_n, checkpoint: {bad}}}"))
    r = run_cli("run", "m.yaml", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--cache-dir",
                tmp_path / "cache", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "models[0].checkpoint" in r.stderr and "looks like an ONNX model" in r.stderr


def test_architecture_mismatch_is_a_short_reason_with_the_full_text_in_the_log(tmp_path):
    """The fixture's weights (3 classes) under the 80-class yolov8_n config: the cell fails at
    load with one short line; every differing tensor is listed in the log tail."""
    pytest.importorskip("mmyolo", reason="builds an mmyolo model (extra mmyolo)")
    (tmp_path / "m.yaml").write_text(LOCK_MATRIX.replace(
        "{name: yolov8_n, checkpoint: random}",
        f"{{name: yolov8_n, checkpoint: {FIXTURE / 'yolov8_synth.pth'}}}"))
    db = f"sqlite:///{tmp_path / 'r.db'}"
    r = run_cli("run", "m.yaml", "--db", db, "--cache-dir", tmp_path / "cache", cwd=tmp_path,
                timeout=600)
    assert r.returncode == 3, r.stderr
    from harness.store import Store

    with Store(db, readonly=True) as store:
        (cell,) = store.cells("latest")
    assert cell.status == "failed" and cell.stage == "load"
    assert cell.error.startswith(f"checkpoint '{FIXTURE / 'yolov8_synth.pth'}' does not match the "
                                 "config: ") and "tensors differ in shape, e.g. " in cell.error
    assert "\n" not in cell.error and len(cell.error) < 400, cell.error
    assert "size mismatch" not in cell.error
    assert cell.log_tail.count(": checkpoint [") >= 2  # the full list went to the log


# ----------------------------------------------------------------------------- corrupted caches

def _tiny_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _export_entry(tmp: Path, calls: list, monkeypatch):
    from harness.export.onnx_export import export_cached

    def build(path: Path):
        calls.append(path)
        _tiny_onnx(path)
        return {"made": len(calls)}

    return lambda: export_cached(tmp / "onnx", {"config": "c", "checkpoint": "random"}, build)


def _fp16_entry(tmp: Path, calls: list, monkeypatch):
    from harness.export import fp16

    src = tmp / "fp32.onnx"
    _tiny_onnx(src)
    for name in ("_onnxruntime", "_modelopt"):
        real = getattr(fp16, name)
        monkeypatch.setattr(fp16, name, lambda a, b, real=real: calls.append(b) or real(a, b))
    return lambda: fp16.to_fp16(src, tmp)[0]


def _calibration_entry(tmp: Path, calls: list, monkeypatch):
    """The calibration cache (tensor ranges) of a one-Conv graph, int8 Q/DQ by ONNX Runtime."""
    import types

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from harness.calibration import qdq

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["images", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], [w])
    src = tmp / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    batches = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(2)]
    calib = types.SimpleNamespace(batches=batches, sha256="c" * 64, images=2, source="test")
    real = qdq._write_ranges
    monkeypatch.setattr(qdq, "_write_ranges", lambda *a: calls.append(a[-1]) or real(*a))
    return lambda: Path(qdq.quantize_qdq(src, calib, "minmax", 99.9, tmp)[1]["calibration_cache"])


def _engine_entry(tmp: Path, calls: list, monkeypatch):
    from harness.trt.cache import cached_engine

    def build():
        calls.append(1)
        return b"engine-bytes-" * 100

    return lambda: cached_engine(tmp / "engines", "fp16_b1_test", build)


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _empty(path: Path):
    path.write_bytes(b"")


def _lose_record(path: Path):
    from harness.cache import sidecar

    sidecar(path).unlink()


#: (id, corruption) × (id, cache) — every cached artifact heals from every corruption
CORRUPTIONS = [("truncated", _truncate), ("one-byte-flipped", _flip_byte), ("emptied", _empty),
               ("sha256-record-lost", _lose_record)]
CACHES = [("exported-onnx", _export_entry), ("fp16-onnx", _fp16_entry),
          ("calibration-ranges", _calibration_entry), ("trt-engine", _engine_entry)]


@pytest.mark.parametrize("corrupt", [c[1] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
@pytest.mark.parametrize("entry", [c[1] for c in CACHES], ids=[c[0] for c in CACHES])
def test_corrupted_cache_entry_heals_itself(tmp_path, monkeypatch, entry, corrupt):
    pytest.importorskip("onnx", reason="the cached artifacts are ONNX graphs (extra onnx)")
    from harness import cache

    if entry is _engine_entry and corrupt is _lose_record:
        corrupt = lambda p: p.with_suffix(".json").write_text("{not json")  # noqa: E731
    cache.drain_warnings()
    calls = []
    get = entry(tmp_path, calls, monkeypatch)
    first = get()
    good = first.read_bytes()
    assert get() == first and len(calls) == 1 and not cache.drain_warnings()  # a verified hit
    corrupt(first)
    again = get()
    assert again == first and len(calls) == 2 and again.read_bytes() == good
    (warning,) = cache.drain_warnings()
    assert warning.startswith(f"cache entry {first} was corrupted (") and \
        warning.endswith("deleted and rebuilt")
    assert get() == first and len(calls) == 2  # healed: a hit again
    if entry is not _engine_entry:
        assert cache.sidecar(first).read_text().split()[0] == cache.file_hash(first)


def test_worker_records_cache_heals_as_cell_warnings(tmp_path):
    """A heal inside a cell's process reaches the cell's warnings (the worker drains them)."""
    from harness import cache
    from harness.runner import worker

    cache.drain_warnings()
    cache.warn("cache entry x was corrupted (test): deleted and rebuilt")
    (tmp_path / "cell.json").write_text('{"key": "k", "cache_dir": "%s", "backend": "nope"}' % tmp_path)
    worker.run_cell = lambda ctx, stages: {"status": "ok", "warnings": ["w"]}  # the cell itself is not under test
    try:
        worker.main([str(tmp_path)])
    finally:
        import importlib

        importlib.reload(worker)
    import json

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["warnings"] == ["w", "cache entry x was corrupted (test): deleted and rebuilt"]


@pytest.mark.slow
def test_a_truncated_cached_onnx_heals_in_a_real_run(tmp_path):
    """The issue's case: the cached export of a run cut short; the next run rebuilds it, the cell
    is ok and says so in its warnings."""
    pytest.importorskip("mmyolo", reason="exports an mmyolo model (extras mmyolo, onnx)")
    pytest.importorskip("onnxruntime", reason="runs the cell on ONNX Runtime (extra onnx)")
    (tmp_path / "m.yaml").write_text(LOCK_MATRIX.replace("backends: [pytorch]", "backends: [onnxruntime]"))
    db, cache_dir = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "cache"
    first = run_cli("run", "m.yaml", "--db", db, "--cache-dir", cache_dir, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr
    (onnx_file,) = (cache_dir / "onnx").glob("*.onnx")
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    second = run_cli("run", "m.yaml", "--db", db, "--cache-dir", cache_dir, cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stderr
    from harness.store import Store

    with Store(db, readonly=True) as store:
        (cell,) = store.cells("latest")
    assert cell.status == "ok"
    assert any(w.startswith(f"cache entry {onnx_file} was corrupted") for w in cell.warnings)
    assert onnx_file.stat().st_size > 1000


# -------------------------------------------------------------------- undefined COCO statistics

def _coco_without_small_objects(tmp: Path) -> Path:
    import json

    images = [{"id": i, "file_name": f"{i}.png", "width": 320, "height": 320} for i in (1, 2)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 200, 200], "area": 40000.0,
             "iscrowd": 0} for i in (1, 2)]
    path = tmp / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "absent"}]}))
    return path


@pytest.mark.parametrize("found", [True, False], ids=["detections", "no-detections"])
def test_undefined_coco_statistics_are_none_and_shown_as_a_dash(tmp_path, found):
    """pycocotools' -1 (no small or medium objects at all; a class with no ground truth) is
    None in the metrics, NULL in the store and "—" in show/export — never 0."""
    from harness import report
    from harness.evaluate.coco_eval import evaluate
    from harness.store import Store

    ann = _coco_without_small_objects(tmp_path)
    dets = [{"image_id": i, "category_id": 1, "bbox": [10, 10, 200, 200], "score": 0.9}
            for i in (1, 2)] if found else []
    coco = evaluate(ann, dets, [1, 2])
    stats = coco["stats"]
    assert stats["AP_small"] is None and stats["AP_medium"] is None and stats["AR_small"] is None
    assert stats["AP_large"] == (1.0 if found else 0.0) and stats["AP"] == (1.0 if found else 0.0)
    if found:
        assert {r["class_name"]: r["ap"] for r in coco["per_class"]} == {"box": 1.0, "absent": None}
    url = f"sqlite:///{tmp_path / 'r.db'}"
    run_id = _new_run(url)
    with Store(url) as store:
        (cell,) = store.cells(run_id)
        store.record_result(cell.id, status="ok", metrics=stats, class_ap=coco["per_class"])
        (cell,) = store.cells(run_id)
        assert cell.metrics["AP_small"] is None
        classes = {r["class_name"]: r["ap"] for r in store.class_ap(cell.id)}
        assert classes == ({"absent": None, "box": 1.0} if found else {})
    row = {**report.cell_row(cell), "AP_small": cell.metrics["AP_small"]}
    assert "| — |" in report.to_markdown([row], ["model", "AP_small"])
    assert report.fmt(cell.metrics["AP_small"], "AP_small") == "—"
    import json

    assert json.loads(report.to_json(store_run(url, run_id), [cell]))["cells"][0]["metrics"]["AP_small"] is None


def store_run(url, run_id):
    from harness.store import Store

    with Store(url, readonly=True) as store:
        return store.get_run(run_id)


# ------------------------------------------------------------------------- detbench's own git sha

GIT_SHA = "from harness.measure.provenance import git_sha; print(git_sha())"


def _git(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def other_repo(tmp_path):
    repo = tmp_path / "someone_elses_project"
    repo.mkdir()
    _git("init", "-q", cwd=repo)
    (repo / "f.txt").write_text("x")
    _git("add", "f.txt", cwd=repo)
    _git("commit", "-q", "-m", "theirs", cwd=repo)
    return repo, _git("rev-parse", "HEAD", cwd=repo)


def _sha_seen(cwd, pythonpath, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("DETBENCH_GIT_SHA", "PYTHONPATH")}
    r = subprocess.run([sys.executable, "-c", GIT_SHA], cwd=cwd, capture_output=True, text=True,
                       env={**clean, "PYTHONPATH": str(pythonpath), **env}, check=True)
    return r.stdout.strip()


def test_git_sha_is_detbenchs_own_from_inside_another_repository(other_repo):
    repo, theirs = other_repo
    ours = _git("rev-parse", "HEAD", cwd=ROOT)
    seen = _sha_seen(repo, ROOT)
    assert seen.removesuffix("-dirty") == ours != theirs
    # inside a git hook GIT_DIR points at the other repository: still ours
    assert _sha_seen(repo, ROOT, GIT_DIR=str(repo / ".git")).removesuffix("-dirty") == ours


def test_an_installed_copy_inside_another_repository_does_not_take_its_sha(other_repo):
    """A non-editable install in a project's virtualenv: the project's sha is not detbench's."""
    import shutil

    repo, theirs = other_repo
    site = repo / ".venv" / "site-packages"
    shutil.copytree(ROOT / "harness", site / "harness",
                    ignore=shutil.ignore_patterns("__pycache__", "_build_sha.txt"))
    assert _sha_seen(repo, site) == "None"
    (site / "harness" / "_build_sha.txt").write_text("0123abcd" * 5 + "\n")  # what setup.py writes
    assert _sha_seen(repo, site) == "0123abcd" * 5
