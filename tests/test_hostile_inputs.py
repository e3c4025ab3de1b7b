"""Hostile inputs: every one gets one clear line, exit code 2, and nothing is written.

THE TABLE below is the place to add the next case: one ``Case`` row per input, naming the
command line, the exit code, the fragments the one-line message must contain (the value
received and the fix), and what it may leave behind (by default: nothing at all — every
file in the case's folder is byte-identical afterwards and no file appears).

Rows run the CLI in-process (``harness.cli.main``) unless they need a real process
(``signal=``: Ctrl-C / SIGTERM of a live run).  Placeholders in ``argv`` and ``files``:
``{tmp}`` the case's folder, ``{db}`` the default SQLite URL there (``{tmp}/results.db``).

Cases that are not a one-line error (a warning recorded with a cell, a progress event
that must not appear) follow the table as plain tests.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from conftest import ROOT

# -- building blocks ---------------------------------------------------------------------------

HEAD = "models: [{name: yolov8_n, checkpoint: random}]\nbackends: [pytorch]\n"
SYNTH = "dataset: {synth: {images: 2}}\n"
GOOD = HEAD + SYNTH
PG_UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/test"  # port 1: nothing listens
PG_NO_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/detbench_no_such_database"
PG_REAL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"  # CI runs PostgreSQL 15 here


def matrix(text: str) -> dict:
    return {"m.yaml": text}


def config_matrix(config: str) -> str:
    return (f"models: [{{name: custom, config: '{config}', checkpoint: random}}]\n"
            "backends: [pytorch]\n" + SYNTH)


ROTATED_CONFIG = "mmyolo::rtmdet/rotated/rtmdet-r_tiny_fast_1xb8-36e_dota.py"
#: a user's own config whose head is rotated: the head decides, not the file's location
ROTATED_HEAD_CONFIG = ("model = dict(type='YOLODetector', bbox_head=dict(type='RTMDetRotatedHead'), "
                       "test_cfg=dict(nms=dict(type='nms', iou_threshold=0.1)))\n"
                       "test_dataloader = dict(dataset=dict(pipeline=[]))\n")
COCO_JSON = '{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}'
ROTATED_JSON = ('{"info": {"box_type": "rotated", "angle_version": "le90"}, "images": [], '
                '"annotations": [], "categories": [{"id": 1, "name": "a"}]}')


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]  # fragments of the one error line: the value and the fix
    code: int = 2
    files: dict = field(default_factory=dict)  # name -> str | bytes, written before the run
    setup: Optional[Callable] = None  # (tmp, monkeypatch) -> None: databases, read-only files
    signal: Optional[int] = None  # send it to a real `detbench run` once a cell is running
    check: Optional[Callable] = None  # (tmp, line) -> None: what the case must leave behind
    writes: bool = False  # True: the case records something (check says what); else nothing


def run_db(tmp: Path, _mp=None) -> None:
    """``{tmp}/results.db``: a detbench store holding one run with one pending cell."""
    shutil.copy(_template_db(), tmp / "results.db")


def random_db(tmp: Path, _mp=None) -> None:
    (tmp / "results.db").write_bytes(os.urandom(4096))


def dir_db(tmp: Path, _mp=None) -> None:
    (tmp / "results.db").mkdir()


def readonly_db(tmp: Path, mp) -> None:
    run_db(tmp)
    make_readonly(tmp / "results.db", mp)


def no_psycopg(_tmp: Path, mp) -> None:
    mp.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails as if not installed


def readonly_out(tmp: Path, mp) -> None:
    run_db(tmp)
    (tmp / "out.csv").write_text("old\n")
    make_readonly(tmp / "out.csv", mp)


def out_dir(tmp: Path, _mp=None) -> None:
    run_db(tmp)
    (tmp / "out").mkdir()


def make_readonly(path: Path, mp) -> None:
    """Read-only even for root: chattr +i as root (undone at teardown), chmod otherwise."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"running as root, and chattr +i is refused here ({r.stderr.strip()}): no way "
                    "to make a file read-only for root")
    _CLEANUP.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=False))


def pg_readonly_role(_tmp: Path, _mp=None) -> None:
    """A PostgreSQL role that may log in but not create or write tables (dropped at teardown)."""
    import psycopg

    def sql(statement: str) -> None:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
            conn.execute(statement)

    sql("DROP ROLE IF EXISTS detbench_hostile_ro")
    sql("CREATE ROLE detbench_hostile_ro LOGIN")
    _CLEANUP.append(lambda: sql("DROP ROLE IF EXISTS detbench_hostile_ro"))


_CLEANUP: list[Callable[[], object]] = []  # undone after each case, whatever happened


def interrupted(tmp: Path, line: str) -> None:
    """Ctrl-C / SIGTERM: the real run id in the message, the run interrupted, no cell running."""
    from harness.store import Store

    with Store(f"sqlite:///{tmp / 'results.db'}", readonly=True) as store:
        run = store.get_run("latest")
        assert run.status == "interrupted"
        assert f"--resume {run.id}" in line and "<run-id>" not in line
        statuses = [c.status for c in store.cells(run.id)]
        assert "running" not in statuses and "pending" in statuses, statuses


# -- THE TABLE ----------------------------------------------------------------------------------

DB_COMMANDS = {  # every command that opens --db
    "run": ("run", "m.yaml"), "list": ("list",), "show": ("show", "latest"),
    "export": ("export", "latest"), "compare": ("compare", "latest"),
    "dashboard": ("dashboard", "--port", "8599"), "db-upgrade": ("db", "upgrade"),
    "db-status": ("db", "status"),
}
WRITERS = ("run", "compare")  # a read-only database is fine for the others

BAD_DATABASES = [  # (id, --db, setup, fragments, commands)
    ("pg-unreachable", PG_UNREACHABLE, None,
     (PG_UNREACHABLE, "cannot be opened", "Connection refused", "check host and port"), DB_COMMANDS),
    ("pg-no-such-database", PG_NO_DATABASE, None,
     ("detbench_no_such_database", "does not exist", "createdb"), DB_COMMANDS),
    ("psycopg-missing", PG_REAL, no_psycopg,
     ("driver 'psycopg' is not installed", "pip install 'detbench[postgres]'"), DB_COMMANDS),
    ("unknown-scheme", "foo://host/db", None,
     ("foo://host/db", "unknown URL scheme 'foo'", "sqlite:///results.db"), DB_COMMANDS),
    ("malformed-url", "postgresql://u@h:notaport/db", None,
     ("'postgresql://u@h:notaport/db' is not a database URL", "notaport", "sqlite:///"), DB_COMMANDS),
    ("sqlite-directory", "{db}", dir_db,
     ("results.db", "is a directory", "give --db a file path"), DB_COMMANDS),
    ("sqlite-random-bytes", "{db}", random_db,
     ("results.db", "file is not a database", "give --db a detbench database"), DB_COMMANDS),
    ("pg-role-cannot-write", PG_REAL.replace("postgres@", "detbench_hostile_ro@"), pg_readonly_role,
     ("detbench_hostile_ro@127.0.0.1", "permission denied", "use a role that may create and write"),
     WRITERS),
    ("sqlite-read-only", "{db}", readonly_db,
     ("results.db", "cannot be", "readonly database", "make", "writable"), WRITERS),
]

CASES = [
    # malformed matrices (formerly tests/test_cli_errors.py)
    Case("matrix-bad-yaml", ("run", "m.yaml"), ("not valid YAML at line",),
         files=matrix("models: [unclosed\n")),
    Case("matrix-not-mapping", ("run", "m.yaml"), ("a matrix is a YAML mapping",),
         files=matrix("- just\n- a list\n")),
    Case("matrix-unknown-key", ("run", "m.yaml"), ("unknown key 'bacthes'", "did you mean 'batch_sizes'"),
         files=matrix(GOOD + "bacthes: [1]\n")),
    Case("matrix-unknown-model", ("run", "m.yaml"), ("unknown model 'yolov8_m'",),
         files=matrix(GOOD.replace("yolov8_n", "yolov8_m"))),
    Case("matrix-unknown-backend", ("run", "m.yaml"),
         ("backends[0]: unknown backend 'tensorrrt' — did you mean 'tensorrt'?",),
         files=matrix(GOOD.replace("[pytorch]", "[tensorrrt]"))),
    Case("matrix-unknown-precision", ("run", "m.yaml"), ("precisions[1]: unknown precision 'int4'",),
         files=matrix(GOOD + "precisions: [fp32, int4]\n")),
    Case("matrix-negative-batch", ("run", "m.yaml"), ("batch_sizes[0]: must be a positive integer",),
         files=matrix(GOOD + "batch_sizes: [-1]\n")),
    Case("matrix-missing-dataset", ("run", "m.yaml"), ("dataset: required key missing",),
         files=matrix(HEAD)),
    Case("matrix-dataset-files-missing", ("run", "m.yaml"), ("dataset.annotations: '{tmp}/none.json'",),
         files=matrix(HEAD + "dataset: {images: nowhere, annotations: none.json}\n")),
    Case("matrix-missing-checkpoint-key", ("run", "m.yaml"), ("models[0].checkpoint: required key missing",),
         files=matrix(GOOD.replace(", checkpoint: random", ""))),
    Case("matrix-checkpoint-file-missing", ("run", "m.yaml"), ("checkpoint '{tmp}/nope.pth' does not exist",
                                                                "or `random`"),
         files=matrix(GOOD.replace("checkpoint: random", "checkpoint: nope.pth"))),
    Case("matrix-file-missing", ("plan", "absent.yaml"), ("matrix file 'absent.yaml' does not exist",)),
    # 1. a database that cannot be opened or written, for every command that takes --db
    *[Case(f"db-{name}-{cmd}", (*DB_COMMANDS[cmd], "--db", url), expect, setup=setup,
           files=matrix(GOOD))
      for name, url, setup, expect, commands in BAD_DATABASES for cmd in commands],
    Case("db-folder-is-a-file", ("run", "m.yaml", "--db", "sqlite:///{tmp}/m.yaml/r.db"),
         ("cannot create the folder", "m.yaml", "writable folder"), files=matrix(GOOD)),
    # 2. a matrix that is not UTF-8
    Case("matrix-not-utf8", ("run", "m.yaml"), ("not UTF-8", "byte 0xe9", "save it as UTF-8"),
         files={"m.yaml": b"name: caf\xe9\n" + GOOD.encode()}),
    # 3. export -o
    Case("export-missing-dir", ("export", "latest", "-o", "{tmp}/nope/out.csv"),
         ("nope/out.csv", "does not exist", "create it"), setup=run_db),
    Case("export-onto-dir", ("export", "latest", "-o", "{tmp}/out"),
         ("'{tmp}/out' is a directory", "give a file path"), setup=out_dir),
    Case("export-readonly-file", ("export", "latest", "-o", "{tmp}/out.csv"),
         ("out.csv' is not writable", "make it writable"), setup=readonly_out),
    # 5. batch sizes: strict integers, bounded
    Case("batch-string", ("run", "m.yaml"), ("batch_sizes[0]", "'8' is text", "plain digits"),
         files=matrix(GOOD + "batch_sizes: ['8']\n")),
    Case("batch-1e9", ("run", "m.yaml"), ("batch_sizes[0]", "'1e9' is text", "plain digits"),
         files=matrix(GOOD + "batch_sizes: [1e9]\n")),
    Case("batch-bool", ("run", "m.yaml"), ("batch_sizes[0]", "expected an integer", "true"),
         files=matrix(GOOD + "batch_sizes: [true]\n")),
    Case("batch-float", ("run", "m.yaml"), ("batch_sizes[0]", "expected an integer", "8.0"),
         files=matrix(GOOD + "batch_sizes: [8.0]\n")),
    Case("batch-huge", ("run", "m.yaml"),
         ("batch_sizes[1]: batch 1000000000 at image size 640", "max_input_gib", "at most 436"),
         files=matrix(GOOD + "batch_sizes: [1, 1000000000]\n")),
    Case("batch-huge-include", ("run", "m.yaml"), ("include[0].batch: batch 5000", "at most"),
         files=matrix(GOOD + "include: [{model: yolov8_n, backend: pytorch, precision: fp32, "
                             "batch: 5000, imgsz: 640, device: cpu}]\n")),
    Case("batch-string-in-rule", ("run", "m.yaml"), ("exclude[0].batch", "'4' is text"),
         files=matrix(GOOD + "exclude: [{batch: '4'}]\n")),
    # 7. model configs: refused at plan time (exit 2), never raw at run time
    Case("config-missing", ("run", "m.yaml"), ("models[0].config", "nope.py' does not exist",
                                               "detbench models"),
         files=matrix(config_matrix("nope.py"))),
    Case("config-missing-plan", ("plan", "m.yaml"), ("models[0].config", "nope.py' does not exist"),
         files=matrix(config_matrix("nope.py"))),
    Case("config-syntax-error", ("run", "m.yaml"),
         ("models[0].config", "bad.py' could not be read: ", "line 1", "fix the file"),
         files={**matrix(config_matrix("bad.py")), "bad.py": "model = dict(type=\n"}),
    Case("config-not-mmyolo", ("run", "m.yaml"),
         ("other.py' is not an mmyolo detector config", "model.type", "detbench models"),
         files={**matrix(config_matrix("other.py")), "other.py": "x = 1\n"}),
    Case("config-directory", ("plan", "m.yaml"), ("models[0].config", "is a directory"),
         files={**matrix(config_matrix("cfgdir")), "cfgdir/keep": ""}),
    Case("config-mmyolo-prefix-missing", ("run", "m.yaml"),
         ("models[0].config", "yolov8/nope.py' does not exist"),
         files=matrix(config_matrix("mmyolo::yolov8/nope.py"))),
    # `detbench models` names are accepted by run exactly as by plan: this one fails on the
    # database, i.e. after its config was resolved and checked
    Case("config-mmyolo-prefix-accepted-by-run", ("run", "m.yaml", "--db", "sqlite:///{tmp}/d"),
         ("is a directory", "give --db a file path"), setup=lambda t, _m: (t / "d").mkdir(),
         files=matrix(config_matrix("mmyolo::yolov8/yolov8_n_syncbn_fast_8xb16-500e_coco.py"))),
    # 8. overrides and rules: the same schema and names as the top-level keys
    Case("override-misspelt-key", ("run", "m.yaml"),
         ("overrides[0].set.timing.iteratons: unknown key 'iteratons'", "did you mean 'iterations'"),
         files=matrix(GOOD + "overrides: [{match: {backend: pytorch}, set: {timing: {iteratons: 5}}}]\n")),
    Case("override-negative-iterations", ("run", "m.yaml"),
         ("overrides[0].set.timing.iterations", "greater than 0", "-5"),
         files=matrix(GOOD + "overrides: [{match: {}, set: {timing: {iterations: -5}}}]\n")),
    Case("override-wrong-type", ("run", "m.yaml"),
         ("overrides[0].set.timing.warmup", "'lots' is text"),
         files=matrix(GOOD + "overrides: [{match: {}, set: {timing: {warmup: lots}}}]\n")),
    Case("override-score-thr-range", ("run", "m.yaml"),
         ("overrides[0].set.eval.score_thr", "less than or equal to 1", "7"),
         files=matrix(GOOD + "overrides: [{match: {}, set: {eval: {score_thr: 7}}}]\n")),
    Case("override-section-not-mapping", ("run", "m.yaml"),
         ("overrides[0].set.timing: expected a mapping", "iterations", "'fast'"),
         files=matrix(GOOD + "overrides: [{match: {}, set: {timing: fast}}]\n")),
    Case("override-timeout-negative", ("run", "m.yaml"),
         ("overrides[0].set.timeout_s", "greater than 0"),
         files=matrix(GOOD + "overrides: [{match: {}, set: {timeout_s: -1}}]\n")),
    Case("override-unknown-section", ("run", "m.yaml"),
         ("unknown override key 'timng'", "did you mean 'timing'"),
         files=matrix(GOOD + "overrides: [{match: {}, set: {timng: {}}}]\n")),
    Case("exclude-misspelt-backend", ("run", "m.yaml"),
         ("exclude[0].backend: unknown backend 'pytorchh'", "did you mean 'pytorch'"),
         files=matrix(GOOD + "exclude: [{backend: pytorchh}]\n")),
    Case("include-misspelt-precision", ("run", "m.yaml"),
         ("include[0].precision: unknown precision 'fp61'", "did you mean 'fp16'"),
         files=matrix(GOOD + "include: [{model: yolov8_n, backend: pytorch, precision: fp61, "
                             "batch: 1, imgsz: 640, device: cpu}]\n")),
    Case("match-misspelt-model", ("run", "m.yaml"),
         ("overrides[0].match.model: unknown model 'yolov8n'", "did you mean 'yolov8_n'"),
         files=matrix(GOOD + "overrides: [{match: {model: yolov8n}, set: {timeout_s: 5}}]\n")),
    Case("match-misspelt-nms", ("run", "m.yaml"),
         ("overrides[0].match.nms: unknown nms variant 'efficient'", "did you mean 'efficient_nms'"),
         files=matrix(GOOD + "overrides: [{match: {nms: efficient}, set: {timeout_s: 5}}]\n")),
    # 9. calibration
    Case("calibration-source-string", ("run", "m.yaml"),
         ("calibration.source: expected a mapping with keys images, annotations, synth",
          "'calib/'"),
         files=matrix(GOOD + "calibration: {source: calib/}\n")),
    Case("calibration-source-missing-files", ("plan", "m.yaml"),
         ("calibration.source.annotations", "calib/ann.json' does not exist", "COCO instances"),
         files=matrix(GOOD + "calibration: {source: {images: calib, annotations: calib/ann.json}}\n")),
    Case("calibration-override-source-missing", ("run", "m.yaml"),
         ("overrides[0].set.calibration.source.annotations", "does not exist"),
         files=matrix(GOOD + "overrides: [{match: {}, set: {calibration: {source: "
                             "{images: c, annotations: c.json}}}}]\n")),
    # 12. smaller ones
    Case("matrix-is-directory", ("run", "mdir"), ("matrix 'mdir' is a directory", "a.yaml",
                                                  "give the path of a matrix YAML file"),
         files={"mdir/a.yaml": GOOD}),
    Case("dataset-missing-at-plan", ("plan", "m.yaml"),
         ("dataset.annotations", "none.json' does not exist"),
         files=matrix(HEAD + "dataset: {images: nowhere, annotations: none.json}\n")),
    # 13. box types (#19): a rotated model on horizontal ground truth or the reverse, at plan time
    Case("rotated-model-horizontal-dataset", ("run", "m.yaml"),
         ("models[0] 'custom' predicts rotated boxes (head RTMDetRotatedHead)",
          "dataset.synth generates horizontal boxes", "give a rotated dataset", "detbench synth --rotated"),
         files=matrix(config_matrix(ROTATED_CONFIG))),
    Case("rotated-model-horizontal-dataset-plan", ("plan", "m.yaml"),
         ("models[0] 'custom' predicts rotated boxes", "horizontal boxes", "give a rotated dataset"),
         files=matrix(config_matrix(ROTATED_CONFIG))),
    Case("rotated-head-in-own-config", ("run", "m.yaml"),
         ("models[0] 'custom' predicts rotated boxes (head RTMDetRotatedHead)", "horizontal boxes"),
         files={**matrix(config_matrix("rot.py")), "rot.py": ROTATED_HEAD_CONFIG}),
    Case("rotated-model-horizontal-coco-file", ("run", "m.yaml"),
         ("models[0] 'custom' predicts rotated boxes", "dataset.annotations '{tmp}/coco.json' "
          "(no info.box_type: rotated) holds horizontal boxes", "give a rotated dataset"),
         files={"m.yaml": config_matrix(ROTATED_CONFIG).replace(SYNTH, "dataset: {images: imgs, "
                                                                "annotations: coco.json}\n"),
                "coco.json": COCO_JSON, "imgs/keep": ""}),
    Case("horizontal-model-rotated-dataset", ("run", "m.yaml"),
         ("models[0] 'yolov8_n' predicts horizontal boxes (head YOLOv8Head)",
          "dataset.annotations '{tmp}/rot.json' (info.box_type: rotated) holds rotated boxes",
          "give a rotated model", "or a horizontal-box dataset"),
         files={"m.yaml": HEAD + "dataset: {images: imgs, annotations: rot.json}\n",
                "rot.json": ROTATED_JSON, "imgs/keep": ""}),
    Case("horizontal-model-rotated-synth", ("plan", "m.yaml"),
         ("models[0] 'yolov8_n' predicts horizontal boxes", "dataset.synth generates rotated boxes",
          "give a rotated model"),
         files=matrix(HEAD + "dataset: {synth: {images: 2, rotated: true}}\n")),
    Case("horizontal-model-rotated-sensitivity-split", ("plan", "m.yaml"),
         ("models[0] 'yolov8_n' predicts horizontal boxes",
          "calibration.sensitivity_source.annotations '{tmp}/rot.json'", "holds rotated boxes"),
         files={"m.yaml": GOOD + "calibration: {sensitivity_source: {images: imgs, "
                                 "annotations: rot.json}}\n",
                "rot.json": ROTATED_JSON, "imgs/keep": ""}),
    Case("dataset-annotations-not-json", ("plan", "m.yaml"),
         ("m.yaml: dataset.annotations: '{tmp}/bad.json' is not valid JSON", "give a COCO instances json"),
         files={"m.yaml": HEAD + "dataset: {images: imgs, annotations: bad.json}\n",
                "bad.json": "{not json", "imgs/keep": ""}),
    Case("ctrl-c", ("run", "m.yaml"), ("interrupted", "marked interrupted", "--resume r"),
         code=130, signal=signal.SIGINT, check=interrupted, writes=True, files=matrix(GOOD)),
    Case("sigterm", ("run", "m.yaml"), ("terminated (SIGTERM)", "--resume r"),
         code=143, signal=signal.SIGTERM, check=interrupted, writes=True, files=matrix(GOOD)),
    Case("worker-start-method", ("run", "m.yaml"),
         ("DETBENCH_WORKER_START='fork' (environment)", "expected one of forkserver, spawn",
          "unset it"), files=matrix(GOOD),
         setup=lambda tmp, mp: mp.setenv("DETBENCH_WORKER_START", "fork")),
]


# -- the one test of the table ------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, tmp_path, monkeypatch, capsys):
    tmp = tmp_path
    fill = {"tmp": str(tmp), "db": f"sqlite:///{tmp / 'results.db'}"}
    for name, content in case.files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("DETBENCH_DB", fill["db"])
    monkeypatch.setenv("DETBENCH_CACHE", str(tmp / "cache"))
    if case.setup is not None:
        case.setup(tmp, monkeypatch)
    argv = [a.format(**fill) for a in case.argv]
    before = _snapshot(tmp)
    try:
        if case.signal is None:
            code, out, err = _in_process(argv, monkeypatch, capsys)
        else:
            code, out, err = _interrupted_process(argv, tmp, case.signal)
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("detbench: ")]
        assert code == case.code, (code, out, err)
        assert "Traceback" not in err and "Traceback" not in out, err
        assert len(errors) == 1, err
        if case.signal is None:
            assert len(lines) == 1, f"more than one line on stderr:\n{err}"
        for fragment in case.expect:
            assert fragment.format(**fill) in errors[0], (fragment, errors[0])
        if case.check is not None:
            case.check(tmp, errors[0])
        if not case.writes:
            assert _snapshot(tmp) == before, "the case wrote or changed files"
    finally:
        while _CLEANUP:
            _CLEANUP.pop()()


def _in_process(argv, monkeypatch, capsys):
    from harness import dashboard_cli
    from harness.cli import main

    def no_streamlit(cmd, env):
        raise AssertionError("the dashboard was started although its --db cannot be opened")

    monkeypatch.setattr(dashboard_cli, "_call", no_streamlit)
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _interrupted_process(argv, tmp: Path, sig: int):
    """A real `detbench run` whose worker hangs in `load`; ``sig`` once its cell is running."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "DETBENCH_FAULT": "@load:hang"}
    from tests.conftest import DETBENCH_AS_FROM_A_TERMINAL, signal_state

    proc = subprocess.Popen([*DETBENCH_AS_FROM_A_TERMINAL, *argv], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    left = []
    try:
        _wait_for_running_cell(tmp / "results.db", proc)
        proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"the run did not end within 120 s of signal {sig}; {signal_state()}; "
                                 f"its stderr so far: {exc.stderr!r}") from exc
        deadline = time.monotonic() + 15  # the worker (and the run's zygote) end with the run
        while _workers_of(tmp) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _workers_of(tmp)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in _workers_of(tmp):  # only this case's own workers, by id
            os.kill(pid, signal.SIGKILL)
    assert not left, f"worker processes left behind by the interrupted run: {left}"
    return proc.returncode, out, err


def _wait_for_running_cell(db: Path, proc, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    if conn.execute("SELECT 1 FROM cells WHERE status = 'running'").fetchone():
                        return
            except sqlite3.OperationalError:  # tables not created yet
                pass
        time.sleep(0.2)
    raise AssertionError("no cell started running")


def _snapshot(root: Path) -> dict:
    """Every file and folder under ``root`` with a hash of its bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


_TEMPLATE: list[Path] = []


def _template_db() -> Path:
    """A store with one run of one pending cell, made once per session, single-file (no WAL)."""
    if not _TEMPLATE:
        import tempfile

        from harness.store import Store

        path = Path(tempfile.mkdtemp(prefix="detbench-hostile-")) / "template.db"
        with Store(f"sqlite:///{path}") as store:
            store.create_run(name="t", matrix_path="m.yaml", matrix_hash="h", matrix_yaml="{}\n",
                             git_sha=None, detbench_version="0", environment={},
                             cells=[dict(key="yolov8_n/pytorch/fp32/b1/s640/cpu/nms-none",
                                         position=0, model="yolov8_n", backend="pytorch",
                                         precision="fp32", batch=1, imgsz=640, device="cpu",
                                         nms="none", params={})])
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA journal_mode = DELETE")
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


# -- cases that are not one-line errors ----------------------------------------------------------

def test_postgres_url_works():
    """psycopg is installed (extra `postgres`): a postgresql+psycopg URL opens (read-only check)."""
    from harness.cli import main

    assert main(["db", "status", "--db", PG_REAL]) == 0


def test_plan_accepts_the_names_detbench_models_prints(tmp_path, capsys):
    from harness.cli import main
    from harness.models.table import MODELS

    name, config = next(iter(MODELS.items()))
    (tmp_path / "m.yaml").write_text(config_matrix(f"mmyolo::{config}"))
    assert main(["models"]) == 0
    assert f"mmyolo::{config}" in capsys.readouterr().out
    assert main(["plan", str(tmp_path / "m.yaml"), "--json"]) == 0


def test_calibration_with_fewer_images_than_asked_warns(synth_val, tmp_path, monkeypatch):
    """Asking for more calibration images than the source has: a recorded warning, not an error."""
    from harness.calibration import data
    from harness.runner.context import CellContext

    images, ann = synth_val  # 6 images
    cell = {"calibration": {"images": 50, "seed": 3, "source": {"images": str(images),
                                                                "annotations": str(ann)}},
            "dataset": {"images": str(images), "annotations": str(ann), "limit": None}}
    ctx = CellContext(cell, tmp_path, tmp_path)
    monkeypatch.setattr(data, "build_calibration_set", lambda files, pre, batch, source: files)
    monkeypatch.setattr(CellContext, "preprocessor", lambda self, device: None)
    assert len(ctx.calibration_set()) == 6
    assert ctx.notes == [f"calibration.images asks for 50 images but calibration.source {ann} has "
                         "only 6: calibrated on 6"]


def test_cell_warnings_are_printed(capsys):
    from harness.cli_views import RunProgress
    from harness.runner.orchestrator import Outcome

    with RunProgress() as progress:
        progress.event("start", {"total": 1})
        progress.event("done", {"outcome": Outcome("k", "ok", None, None, 1.0, ["only 6 images"])})
    assert "warning: only 6 images" in capsys.readouterr().err


def test_no_compare_progress_for_a_run_with_nothing_to_compare(tmp_path):
    from harness.runner import orchestrator
    from harness.store import Store

    (tmp_path / "m.yaml").write_text(HEAD.replace("[pytorch]", "[pytorch]\nprecisions: [int8]") + SYNTH)
    events = []
    with Store(f"sqlite:///{tmp_path / 'r.db'}") as store:
        run_id = orchestrator.create_run(store, tmp_path / "m.yaml", tmp_path / "cache")
        assert {c.status for c in store.cells(run_id)} == {"skipped"}
        orchestrator.execute(store, run_id, tmp_path / "cache", on_event=lambda k, d: events.append((k, d)))
    assert events == [("start", {"total": 0})]


def test_killed_orchestrator_leaves_no_worker(tmp_path):
    """kill -9 of `detbench run` takes its worker down too (PR_SET_PDEATHSIG, set by the worker)."""
    (tmp_path / "m.yaml").write_text(GOOD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "DETBENCH_FAULT": "@load:hang"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "m.yaml", "--db",
                             f"sqlite:///{tmp_path / 'results.db'}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stage = None
        deadline = time.monotonic() + 240
        while stage is None and time.monotonic() < deadline:  # the worker reached `load` and hangs
            stage = next(iter(tmp_path.glob(".detbench/runs/*/*/stage")), None)
            time.sleep(0.2)
        assert stage is not None, "the worker never started"
        workers = _workers_of(stage.parent)
        assert workers, "no worker process found"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 60
        run_dir = stage.parent.parent  # the worker and the run's zygote, if the worker was forked
        while _workers_of(run_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _workers_of(run_dir), "the worker (or its zygote) outlived its orchestrator"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _workers_of(tmp_path):  # only this test's own workers, by id
            os.kill(pid, signal.SIGKILL)


def _workers_of(work_dir: Path) -> list[int]:
    """Live detbench processes of ``work_dir`` or a folder inside it: spawned workers and the
    run's zygote (their command line names the folder) and workers forked by the zygote (their
    command line is the zygote's: the cell folder's ``pid`` file names them)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        args = _live_args(int(cmdline.parent.name))
        named = any(arg.startswith(str(work_dir).encode()) for arg in args)
        if named and ({b"harness.runner.worker", b"harness.runner.zygote"} & set(args)):
            found.add(int(cmdline.parent.name))
    for pid_file in work_dir.rglob("pid"):
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        if b"harness.runner.zygote" in _live_args(pid):  # a forked worker, not a recycled pid
            found.add(pid)
    return sorted(found)


def _live_args(pid: int) -> list[bytes]:
    """The command line of a live (not zombie) process, or []."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return []
    return [] if state == "Z" else args
