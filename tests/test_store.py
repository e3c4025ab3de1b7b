"""Tests for the results store (harness.store): API semantics, schema revisions, read-only use."""
import hashlib
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from harness.errors import UserError
from harness.store import Store, current_revision, head_revision, migrations, upgrade
from harness.store.schema import Base

REPO = Path(__file__).resolve().parents[1]
NEXT_REVISION = textwrap.dedent("""\
    from alembic import op
    import sqlalchemy as sa

    revision = "9003"
    down_revision = "{head}"
    branch_labels = None
    depends_on = None


    def upgrade():
        op.create_table("extra", sa.Column("id", sa.Integer, primary_key=True))


    def downgrade():
        op.drop_table("extra")
""")


def _cell(i, **extra):
    return dict(key=f"yolov8n/trt/fp16/b{i}", position=i, model="yolov8n", backend="trt",
                precision="fp16", batch=i, imgsz=640, device="cuda:0", nms="none",
                params={"batch": i}, **extra)


def _run(store, n=3, name="smoke", **cell_extra):
    cells = [_cell(i) for i in range(1, n + 1)]
    cells[-1].update(cell_extra)
    return store.create_run(name=name, matrix_path="m.yaml", matrix_hash="abc",
                            matrix_yaml="models: [yolov8n]\n", git_sha="deadbeef",
                            detbench_version="0.1.0", environment={"gpu": "H100"}, cells=cells)


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def store(url):
    with Store(url) as s:
        yield s


def test_create_list_get(store):
    first = _run(store, name="first")
    second = _run(store, name="second", status="skipped", error="no TensorRT")
    assert [r.id for r in store.list_runs()] == [second, first]
    assert [r.id for r in store.list_runs(limit=1)] == [second]
    run = store.get_run("latest")
    assert run.id == second and run.status == "running" and run.environment == {"gpu": "H100"}
    assert run.counts == {"pending": 2, "running": 0, "ok": 0, "failed": 0, "skipped": 1}
    assert store.get_run(first[:-1]).id == first  # unique prefix
    assert store.get_run(first).name == "first"
    skipped = store.cells(second, status="skipped")
    assert [(c.position, c.error) for c in skipped] == [(3, "no TensorRT")]
    assert [c.position for c in store.cells(second)] == [1, 2, 3]


def test_run_ids_and_lookup_errors(store):
    run_id = _run(store)
    assert run_id.startswith("r") and len(run_id) == len("r20261126-001654-3f2a")
    with pytest.raises(UserError, match="nope.*detbench list"):
        store.get_run("nope")
    _run(store)
    with pytest.raises(UserError, match="ambiguous"):
        store.get_run("r")
    store.finish_run(run_id, "finished")
    finished = store.get_run(run_id)
    assert finished.status == "finished" and finished.finished_at is not None


def test_latest_on_empty_db_and_is_empty(store):
    assert store.is_empty()
    with pytest.raises(UserError, match="detbench run"):
        store.get_run("latest")
    _run(store)
    assert not store.is_empty()


def test_plan_rejects_duplicate_keys(store):
    cells = [_cell(1), _cell(1)]
    with pytest.raises(ValueError, match="duplicate"):
        store.create_run(name="x", matrix_path=None, matrix_hash="h", matrix_yaml="", git_sha=None,
                         detbench_version="0", environment={}, cells=cells)
    assert store.is_empty()  # one transaction: the run row went too


def test_cells_to_run_resume_and_force(store):
    run_id = _run(store, n=5, status="skipped", error="unsupported")
    ok, failed, leftover, pending, skipped = store.cells(run_id)
    store.mark_running(ok.id)
    store.record_result(ok.id, status="ok", samples={"model": [1.0, 2.0]})
    store.record_result(failed.id, status="failed", stage="build", error="boom")
    store.mark_running(leftover.id)  # the process was killed here
    todo = store.cells_to_run(run_id)
    assert [c.id for c in todo] == [leftover.id, pending.id]
    assert all(c.status == "pending" for c in todo)
    assert store.cells(run_id, status="running") == []

    forced = store.cells_to_run(run_id, force=True)
    assert [c.id for c in forced] == [ok.id, failed.id, leftover.id, pending.id]
    assert all(c.status == "pending" and c.error is None and c.metrics is None for c in forced)
    assert store.latency_samples(ok.id) == []
    assert [c.id for c in store.cells(run_id, status="skipped")] == [skipped.id]


def test_record_result_replaces_rows_and_fills_scalars(store):
    run_id = _run(store, n=1)
    (cell,) = store.cells(run_id)
    for attempt in range(2):
        store.mark_running(cell.id)
        store.record_result(
            cell.id, status="ok", duration_s=12.5,
            metrics={"AP": 0.42 + attempt, "AP50": 0.61}, warnings=["slow"],
            latency={"median_ms": 3.0, "p99_ms": 4.5, "throughput_ips": 333.0, "std": float("nan")},
            samples={"model": [3.0, 3.1, 2.9], "e2e": [5.0, 5.2]},
            class_ap=[{"class_name": "circle", "ap": 0.5, "ap50": 0.7},
                      {"class_name": "square", "ap": float("nan")}],
            telemetry_samples=[{"t_s": 0.0, "power_w": 300.0}, {"t_s": 0.1, "temp_c": 60.0}])
    assert store.latency_samples(cell.id) == [3.0, 3.1, 2.9]
    assert store.latency_samples(cell.id, "e2e") == [5.0, 5.2]
    assert store.class_ap(cell.id) == [{"class_name": "circle", "ap": 0.5, "ap50": 0.7},
                                       {"class_name": "square", "ap": None, "ap50": None}]
    telemetry = store.telemetry_samples(cell.id)
    assert [(t["t_s"], t["power_w"], t["temp_c"]) for t in telemetry] == [(0.0, 300.0, None),
                                                                          (0.1, None, 60.0)]
    done = store.cells(run_id)[0]
    assert (done.status, done.ap, done.ap50) == ("ok", 1.42, 0.61)
    assert (done.latency_median_ms, done.latency_p99_ms, done.throughput_ips) == (3.0, 4.5, 333.0)
    as_dict = done.to_dict()
    assert list(as_dict)[:3] == ["id", "run_id", "key"]
    assert as_dict["latency"]["std"] is None and isinstance(as_dict["finished_at"], str)


def test_history_oldest_first(store):
    spec = dict(model="yolov8n", backend="trt", precision="fp16", batch=1, imgsz=640,
                device="cuda:0")
    runs = [_run(store, n=1) for _ in range(2)]
    for ap, run_id in zip((0.3, 0.4), runs):
        store.record_result(store.cells(run_id)[0].id, status="ok", metrics={"AP": ap})
    history = store.history(**spec)
    assert [(h["run_id"], h["ap"]) for h in history] == [(runs[0], 0.3), (runs[1], 0.4)]
    assert store.history(**{**spec, "nms": "trt-efficient"}) == []


def test_readonly_never_creates_or_writes(tmp_path, url):
    missing = tmp_path / "absent.db"
    with pytest.raises(UserError, match="detbench run"):
        Store(f"sqlite:///{missing}", readonly=True)
    with pytest.raises(UserError):
        Store(f"sqlite:///{missing}", create=False)
    assert not missing.exists()
    assert current_revision(f"sqlite:///{missing}") is None and not missing.exists()

    with Store(url) as writer:
        run_id = _run(writer)
    db = Path(url.removeprefix("sqlite:///"))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with Store(url, readonly=True) as reader:
        assert reader.get_run(run_id).id == run_id and not reader.is_empty()
        with pytest.raises(RuntimeError, match="read-only"):
            reader.finish_run(run_id, "finished")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_readonly_refuses_file_without_schema(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(UserError, match="detbench run"):
        Store(f"sqlite:///{empty}", readonly=True)
    assert empty.stat().st_size == 0


def test_sqlite_pragmas(store, url):
    _run(store)
    with store.session() as session:
        connection = session.connection()
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_fresh_db_is_at_head_and_upgrade_from_nothing(tmp_path, url):
    assert head_revision() == max(p.name[:4] for p in
                                  (REPO / "harness/store/migrations/versions").glob("0*.py"))
    fresh = f"sqlite:///{tmp_path / 'sub' / 'fresh.db'}"
    assert upgrade(fresh) == head_revision() == current_revision(fresh)
    assert upgrade(fresh) == head_revision()  # idempotent
    with Store(fresh, create=False) as s:
        assert s.is_empty()
    Store(url).close()
    assert current_revision(url) == head_revision()


def test_migrations_match_models(url):
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_unknown_revision_is_refused(url):
    upgrade(url)
    _set_revision(url, "9999")
    for attempt in (lambda: Store(url), lambda: Store(url, readonly=True), lambda: upgrade(url)):
        with pytest.raises(UserError, match="9999.*newer detbench"):
            attempt()


def test_tables_without_revision_are_refused(tmp_path):
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE something (x)")
    with pytest.raises(UserError, match="no detbench schema revision"):
        Store(f"sqlite:///{path}")
    with pytest.raises(UserError, match="no detbench schema revision"):
        upgrade(f"sqlite:///{path}")


def test_behind_head_is_refused_until_upgraded(tmp_path, url, monkeypatch):
    Store(url).close()  # at head
    head = head_revision()
    scripts = tmp_path / "migrations"
    shutil.copytree(migrations.SCRIPT_LOCATION, scripts,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9003_extra.py").write_text(NEXT_REVISION.replace("{head}", head))
    monkeypatch.setattr(migrations, "SCRIPT_LOCATION", str(scripts))
    assert head_revision() == "9003"
    with pytest.raises(UserError) as refused:
        Store(url)
    assert str(refused.value) == (f"database {url} is at schema revision {head}, behind 9003: "
                                  f"run `detbench db upgrade --db {url}`")
    assert upgrade(url) == "9003" == current_revision(url)
    Store(url).close()


def test_import_is_light():
    code = ("import sys, harness.store; "
            "print(','.join(m for m in ('torch', 'numpy', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def _set_revision(url, rev):
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (rev,))
