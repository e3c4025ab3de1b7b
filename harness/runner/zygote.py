"""A pre-imported worker (fork server): the heavy imports once per run, one forked process per cell.

Importing torch, mmengine, mmdet and mmyolo and registering mmyolo's modules
costs several seconds (15-20 s on the lent H200 host) and a fresh worker
process per cell paid it every time.  The *zygote* is one process per run,
started by the local executor, that does those imports (never initialising
CUDA: a CUDA context does not survive ``fork``) and then forks one child per
cell.  The child is the cell's worker exactly as before: its own process and
session, its own CUDA context, ``log.txt``, ``stage`` and ``result.json`` in
the cell's folder, SIGKILL when its parent dies, the orchestrator's timeout;
a crash (abort, segfault, ``os._exit``) ends only that child.

Protocol (JSON messages over a socket pair, ``multiprocessing.connection``
framing): the zygote sends ``{"ready": ...}`` once imported; then for each
``{"op": "run", "work_dir": ...}`` it answers ``{"pid": N}`` when the child is
forked and ``{"exit": code}`` (``subprocess`` convention: -N for signal N)
when it has ended; ``{"op": "kill"}`` kills the running child's process
group.  The orchestrator closing its end stops the zygote (and kills a child
still running); the orchestrator dying kills the zygote (``PR_SET_PDEATHSIG``)
and so its child.

``DETBENCH_WORKER_START=spawn`` keeps the previous behaviour (``python -m
harness.runner.worker`` per cell); it is also the fallback, with a note, when
the zygote cannot start or finds CUDA initialised after its imports.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from harness.errors import UserError

START_METHODS = ("forkserver", "spawn")
READY_TIMEOUT_S = 900.0
#: what every cell imports (each optional: a missing package is the child's problem, loudly)
_BASE = ("numpy", "cv2", "torch", "pycocotools.coco", "pycocotools.cocoeval", "mmengine.config",
         "harness.runner.worker", "harness.measure.provenance", "harness.measure.measure_cell",
         "harness.models.stream", "harness.models.preprocess", "harness.evaluate.coco_eval",
         "harness.data.input_cache", "harness.export.deploy", "harness.models.mmyolo_build")
#: what a backend's cells import besides (TensorRT is left to the cell: its import may touch the
#: driver; onnxruntime too on CUDA, where its CUDA libraries must load after torch's, in the cell)
_BY_BACKEND = {"pytorch": ("harness.backends.pytorch",),
               "onnxruntime": ("onnx", "harness.backends.onnxruntime", "harness.export.loader"),
               "tensorrt": ("onnx", "harness.export.loader")}
_BY_EVALUATOR = {"faster-coco-eval": ("faster_coco_eval",)}


def start_method(env: Optional[dict] = None) -> str:
    """``DETBENCH_WORKER_START`` (default ``forkserver``); a UserError for another value."""
    value = (os.environ if env is None else env).get("DETBENCH_WORKER_START") or "forkserver"
    if value not in START_METHODS:
        raise UserError(f"DETBENCH_WORKER_START={value!r} (environment): expected one of "
                        f"{', '.join(START_METHODS)}; unset it for the default (forkserver)")
    return value


def preload_spec(cells) -> dict:
    """What the zygote prepares for these cells: the modules of their backends and evaluators,
    and their mmyolo configs (read once, copied into each cell)."""
    from harness.models.table import packaged_config

    names, configs, ort_devices = list(_BASE), [], set()
    for cell in cells:
        params = cell if isinstance(cell, dict) else cell.params
        names += _BY_BACKEND.get(params.get("backend"), ())
        if params.get("backend") == "onnxruntime":
            ort_devices.add(str(params.get("device")).split(":")[0])
        names += _BY_EVALUATOR.get((params.get("eval") or {}).get("evaluator"), ())
        spec = params.get("model_spec") or {}
        if not (spec.get("onnx") or spec.get("ultralytics")) and spec.get("name"):
            config = spec.get("config") or (spec["name"] in _table() and packaged_config(spec["name"]))
            if config:
                configs.append(str(config))
    if ort_devices == {"cpu"}:
        names.append("onnxruntime")
    return {"modules": list(dict.fromkeys(names)), "configs": list(dict.fromkeys(configs))}


def _table() -> dict:
    from harness.models.table import KNOWN_MODELS

    return KNOWN_MODELS  # the rotated family's packaged configs are pre-read too


# ------------------------------------------------------------------------------ orchestrator side

class Zygote:
    """The orchestrator's handle on a zygote: ``start``, then ``run`` per cell, then ``close``."""

    def __init__(self, run_dir: Path, preload: dict):
        self.run_dir = Path(run_dir)
        self.preload = preload  # preload_spec()
        self.proc: Optional[subprocess.Popen] = None
        self.conn = None
        self.info: dict = {}

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> tuple[bool, str]:
        """Start the zygote and wait until it has imported; (ready, why not)."""
        from multiprocessing.connection import Connection

        self.run_dir.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "DETBENCH_PARENT_PID": str(os.getpid()),
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        with open(self.run_dir / "zygote.log", "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness.runner.zygote", str(theirs.fileno()), str(self.run_dir),
                 json.dumps(self.preload)],
                pass_fds=(theirs.fileno(),), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        theirs.close()
        self.conn = Connection(ours.detach())
        deadline = time.monotonic() + timeout_s
        try:
            while not self.conn.poll(0.2):
                if self.proc.poll() is not None:
                    return False, (f"it exited with code {self.proc.returncode} before it was ready "
                                   f"(log: {self.run_dir / 'zygote.log'})")
                if time.monotonic() > deadline:
                    return False, f"it was not ready after {timeout_s:.0f} s"
            self.info = _recv(self.conn).get("ready") or {}
        except EOFError:  # it died: say how
            try:
                how = f"exited with code {self.proc.wait(timeout=10)}"
            except subprocess.TimeoutExpired:
                how = "closed its channel"
            return False, f"it {how} before it was ready (log: {self.run_dir / 'zygote.log'})"
        except BaseException:
            self.close()
            raise
        if not self.info.get("ok"):
            return False, self.info.get("reason") or "it reported no reason"
        return True, ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.conn is not None

    def run(self, work_dir: Path, timeout_s: float, on_stage: Callable[[str], None]) -> tuple[int, bool]:
        """One cell in a forked child: (exit code, timed out), like the spawned worker's."""
        (work_dir / "log.txt").write_text("")
        _send(self.conn, {"op": "run", "work_dir": str(work_dir)})
        deadline = time.monotonic() + timeout_s
        last_stage, pid, killed = None, None, False
        try:
            while True:
                if self.conn.poll(0.2):
                    msg = _recv(self.conn)
                    if "pid" in msg:
                        pid = msg["pid"]
                    elif "exit" in msg:
                        return msg["exit"], killed
                    elif "error" in msg:  # the fork itself failed
                        with open(work_dir / "log.txt", "a") as log:
                            log.write(f"[detbench] the zygote could not fork the worker: {msg['error']}\n")
                        return 1, False
                if not killed and time.monotonic() > deadline:
                    _send(self.conn, {"op": "kill"})
                    killed = True
                stage = _read_stage(work_dir)
                if stage and stage != last_stage:
                    on_stage(stage)
                    last_stage = stage
        except EOFError:  # the zygote died under the cell (OOM killer, kill -9): its child with it
            return -signal.SIGKILL, killed
        except BaseException:  # Ctrl-C / SIGTERM: the child goes, then the interruption goes on
            self._kill_child()
            raise

    def _kill_child(self) -> None:
        try:
            _send(self.conn, {"op": "kill"})
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.conn.poll(0.2):
                if "exit" in _recv(self.conn):
                    return
        except (OSError, EOFError):
            pass

    def close(self) -> None:
        """Stop the zygote (it kills a child still running); idempotent."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _send(conn, msg: dict) -> None:
    conn.send_bytes(json.dumps(msg).encode())


def _recv(conn) -> dict:
    return json.loads(conn.recv_bytes())


def _read_stage(work_dir: Path) -> Optional[str]:
    try:
        return (work_dir / "stage").read_text().strip() or None
    except OSError:
        return None


# ----------------------------------------------------------------------------------- zygote side

def _preload(spec: dict) -> dict:
    """Import ``spec["modules"]`` (prepare mmyolo's registries once) and read ``spec["configs"]``;
    report what was done and how long each took."""
    t0 = time.perf_counter()
    done, missing, per = [], {}, {}
    cuda = _CudaAnswers()  # started first: it runs beside the imports
    try:
        _import_all(spec, done, missing, per, cuda)
    finally:
        cuda.uninstall()
    return {"preloaded": done, "missing": missing, "import_s": per, "cuda_query": cuda.report(),
            "total_s": round(time.perf_counter() - t0, 3)}


def _import_all(spec: dict, done: list, missing: dict, per: dict, cuda: "_CudaAnswers") -> None:
    import importlib
    import traceback

    for name in spec.get("modules", ()):
        t = time.perf_counter()
        try:
            importlib.import_module(name)
            if name == "torch":
                cuda.install(sys.modules["torch"])
            done.append(name)
        except ImportError as exc:  # an optional package: the cell imports it again, loudly
            missing[name] = str(exc)[:200]
        except Exception:  # a broken package is the cell's error to report, not the zygote's
            traceback.print_exc()
            missing[name] = "raised on import (traceback in zygote.log)"
        per[name] = round(time.perf_counter() - t, 3)
    if "harness.models.mmyolo_build" in done and "torch" in done:
        t = time.perf_counter()
        try:
            from harness.models.mmyolo_build import prepare_mm

            prepare_mm()  # mmcv._ext stand-in, mmyolo's registries: the children find them made
            done.append("prepare_mm")
        except Exception:
            traceback.print_exc()
            missing["prepare_mm"] = "raised (traceback in zygote.log)"
        per["prepare_mm"] = round(time.perf_counter() - t, 3)
        for config in spec.get("configs", ()):
            t = time.perf_counter()
            try:
                from harness.models.mmyolo_build import read_config

                read_config(config)
                done.append(config)
            except Exception as exc:  # a broken config is its cell's error (UserError at load)
                missing[config] = f"{type(exc).__name__}: {str(exc)[:200]}"
            per[config] = round(time.perf_counter() - t, 3)


#: what a fresh process answers (the zygote must not ask: see _CudaAnswers)
_CUDA_QUERY = "import torch; print(int(torch.cuda.is_available()), torch.cuda.device_count())"


class _CudaAnswers:
    """``torch.cuda.is_available()`` / ``device_count()`` as a fresh process answers them, with no
    CUDA call in the zygote.

    mmengine and mmcv ask at import time (``mmengine.device``, ``mmcv.utils.device_type``,
    ``MMLogger``), and keep the answers in module globals.  Asking in the zygote would run
    ``cudaGetDeviceCount``, which initialises the CUDA driver: a forked child could not use the
    GPU.  A helper process (same interpreter and environment, so the answer a spawned worker
    gets) asks instead; it starts before the imports and runs beside them, and while the zygote
    imports, torch.cuda's two functions return its answers.  Only for a torch built with CUDA
    (a CPU build answers without touching any driver).  If the helper fails, the real functions
    answer, and readiness() then refuses the zygote (the run spawns its workers).
    """

    def __init__(self):
        self.proc, self.answer, self.error, self.originals = None, None, None, None
        self.t0 = time.perf_counter()
        self.waited_s = 0.0
        if _torch_has_cuda():
            self.proc = subprocess.Popen([sys.executable, "-c", _CUDA_QUERY], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)

    def get(self):
        if self.answer is None and self.proc is not None and self.error is None:
            t = time.perf_counter()
            try:
                out, err = self.proc.communicate(timeout=300)
                available, count = out.split()[-2:]
                self.answer = (bool(int(available)), int(count))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
                self.error = "timed out"
            except ValueError:
                self.error = f"exit {self.proc.returncode}: {(err or out).strip()[-300:]}"
            self.waited_s += time.perf_counter() - t
        return self.answer

    def install(self, torch) -> None:
        if self.proc is None or self.originals is not None:
            return
        cuda = torch.cuda
        self.originals = (cuda, cuda.is_available, cuda.device_count)
        is_available, device_count = cuda.is_available, cuda.device_count

        def answered_is_available() -> bool:
            answer = self.get()
            return answer[0] if answer else is_available()

        def answered_device_count() -> int:
            answer = self.get()
            return answer[1] if answer else device_count()

        cuda.is_available, cuda.device_count = answered_is_available, answered_device_count

    def uninstall(self) -> None:
        if self.originals is not None:
            cuda, is_available, device_count = self.originals
            cuda.is_available, cuda.device_count = is_available, device_count
            self.originals = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def report(self) -> dict:
        return {"helper": self.proc is not None, "answer": self.answer, "error": self.error,
                "waited_s": round(self.waited_s, 3)}


def _torch_has_cuda() -> bool:
    """Whether the installed torch is a CUDA build (its ``lib`` holds ``libc10_cuda``), unimported."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return any(lib.glob("libc10_cuda*.so*"))


def readiness(modules: dict, device_files: Optional[list] = None) -> dict:
    """Whether a process with these ``modules`` (``sys.modules``) and open ``device_files``
    (default: this process's) may fork cell workers.

    Not when CUDA is initialised (torch's lazy init, or any library that opened the
    NVIDIA device files): a forked child could not use the GPU.
    """
    torch = modules.get("torch")
    cuda = bool(torch is not None and torch.cuda.is_initialized())
    device_files = _nvidia_device_files() if device_files is None else device_files
    reason = ""
    if cuda:
        reason = "CUDA was initialised by the pre-imports (torch.cuda.is_initialized())"
    elif device_files:
        reason = f"the pre-imports opened NVIDIA device files ({', '.join(device_files)})"
    return {"ok": not reason, "reason": reason, "cuda_initialized": cuda,
            "nvidia_device_files": device_files}


def _nvidia_device_files() -> list[str]:
    out = []
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/dev/nvidia"):
                out.append(target)
    except OSError:
        pass
    return sorted(set(out))


def _native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def serve(fd: int, run_dir: Path, spec: dict) -> int:
    from multiprocessing.connection import Connection
    import threading

    from harness.runner.worker import _die_with_parent, _inject_fault

    _die_with_parent()  # the orchestrator gone: this process and (by their own setting) its children
    conn = Connection(fd)
    report = _preload(spec)
    _inject_fault("zygote")  # tests: DETBENCH_FAULT=@zygote:abort, a zygote dying before it is ready
    state = readiness(sys.modules)
    if threading.active_count() > 1:  # a Python thread would be copied mid-flight into every child
        state = {**state, "ok": False,
                 "reason": f"the pre-imports started Python threads ({threading.enumerate()})"}
    info = {**report, **state, "pid": os.getpid(), "native_threads": _native_threads()}
    print(f"[detbench] zygote {json.dumps(info)}", flush=True)
    _send(conn, {"ready": info})
    if not info["ok"]:
        return 1
    while True:
        try:
            msg = _recv(conn)
        except EOFError:
            return 0
        if msg.get("op") != "run":
            continue  # a late kill for a child already reaped
        try:
            pid = _fork_cell(Path(msg["work_dir"]), conn)
        except OSError as exc:
            _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
            continue
        _send(conn, {"pid": pid})
        code, orphaned = _supervise(pid, conn)
        if orphaned:
            return 0
        _send(conn, {"exit": code})


def _supervise(pid: int, conn) -> tuple[int, bool]:
    """Wait for the child, killing its group when asked; (exit code, the orchestrator is gone)."""
    from multiprocessing.connection import wait

    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # before Linux 5.3: poll
        pidfd = None
    try:
        while True:
            ready = wait([conn] + ([pidfd] if pidfd is not None else []),
                         timeout=None if pidfd is not None else 0.1)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), False
            if conn in ready:
                try:
                    msg = _recv(conn)
                except EOFError:
                    _kill_group(pid)
                    os.waitpid(pid, 0)
                    return -signal.SIGKILL, True
                if msg.get("op") == "kill":
                    _kill_group(pid)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_group(pid: int) -> None:
    """SIGKILL the child's session (its decode helpers, an exporter it started) and the child.

    Safe against pid reuse: the child is not reaped yet, so ``pid`` is still it."""
    for kill in (os.killpg, os.kill):  # killpg fails if the child has not yet called setsid
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _fork_cell(work_dir: Path, conn) -> int:
    import warnings

    sys.stdout.flush()
    sys.stderr.flush()
    zygote = os.getpid()
    with warnings.catch_warnings():
        # Python 3.12 warns when a process with several OS threads forks.  Those here are idle
        # native pools (OpenBLAS, OpenCV, ...) whose libraries re-create them after fork; serve()
        # refuses to fork when a Python thread exists.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        conn.close()
        code = _child(work_dir, zygote)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            import logging

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _child(work_dir: Path, zygote: int) -> int:
    """The cell's worker, in the forked child: a fresh session, its own log, then ``worker.main``."""
    os.setsid()  # like start_new_session: the orchestrator kills the cell's whole group
    log = os.open(work_dir / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ["DETBENCH_PARENT_PID"] = str(zygote)  # worker.main dies with the zygote
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # a spawned worker seeds numpy's global generator from the OS: so do we
        numpy.random.seed()
    _name_process()
    from harness.runner import worker

    return worker.main([str(work_dir)], started_by="forkserver")


def _name_process() -> None:
    """``ps -o comm``/``top`` show ``detbench-cell`` (the command line stays the zygote's)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(15, b"detbench-cell", 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])))
