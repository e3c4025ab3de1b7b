"""The shared PostgreSQL store, against a real server (127.0.0.1:5432, trust auth, database `test`).

Each test module makes its own database and drops it afterwards.  With no server the
tests skip and say why — except in CI (CI=true), where a missing server fails them,
so this path can never go silently untested.  ``DETBENCH_TEST_PG`` overrides the
server URL.  The two-writer test runs on SQLite too.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from conftest import ROOT, has_module, run_cli

SERVER = os.environ.get("DETBENCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _admin_conninfo() -> str:
    return make_url(SERVER).set(drivername="postgresql").render_as_string(hide_password=False)


def server_or_skip() -> None:
    """Skip (fail under CI=true) when no PostgreSQL server answers at SERVER."""
    reason = None
    try:
        import psycopg

        psycopg.connect(_admin_conninfo(), connect_timeout=5).close()
    except ImportError:
        reason = "psycopg is not installed (pip install -e '.[postgres]')"
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server"
        reason = f"no PostgreSQL server answers at {SERVER}: {str(exc).strip().splitlines()[0]}"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}: CI must test the PostgreSQL store")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def pg_url():
    """A fresh database on the server, dropped (even if connected to) after the module."""
    server_or_skip()
    import psycopg

    name = f"detbench_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(_admin_conninfo(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(SERVER).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_admin_conninfo(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _cell(i: int) -> dict:
    return dict(key=f"m/onnxruntime/fp16/b{i}", position=i, model="m", backend="onnxruntime",
                precision="fp16", batch=i, imgsz=320, device="cuda:0", nms="none", params={"i": i})


def test_migrations_run_on_postgres_and_match_the_models(pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from harness.store import current_revision, head_revision, upgrade
    from harness.store.schema import Base

    assert current_revision(pg_url) is None
    assert upgrade(pg_url) == head_revision()
    assert current_revision(pg_url) == head_revision()
    upgrade(pg_url)  # idempotent
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        kinds = dict(conn.execute(text("SELECT column_name, data_type FROM information_schema.columns "
                                       "WHERE table_name = 'cells'")).all())
    engine.dispose()
    assert kinds["metrics"] == "json" and kinds["started_at"].startswith("timestamp")


def test_store_round_trip_and_read_only_on_postgres(pg_url):
    from harness.store import Store

    with Store(pg_url) as store:
        run_id = store.create_run(name="pg", matrix_path="m.yaml", matrix_hash="h", matrix_yaml="y",
                                  git_sha=None, detbench_version="0", cells=[_cell(1), _cell(2)],
                                  environment={"nan": float("nan"), "text": "ümlaut"})
        first, second = store.cells(run_id)
        store.mark_running(first.id)
        store.record_result(first.id, status="ok", metrics={"AP": 0.5, "AP50": float("inf")},
                            latency={"median_ms": 1.5}, samples={"model": [1.0, 2.0, 1.5]},
                            class_ap=[{"class_name": "a", "ap": 0.4, "ap50": 0.6}],
                            telemetry_samples=[{"t_s": 0.0, "power_w": 300.0}],
                            log_tail="crash \x00 log")
        store.record_result(second.id, status="failed", stage="build", error="no plugin")
        store.finish_run(run_id, "finished")
    with Store(pg_url, readonly=True) as viewer:
        run = viewer.get_run("latest")
        assert run.id == run_id and run.counts["ok"] == 1 and run.counts["failed"] == 1
        ok = viewer.cells(run_id, status="ok")[0]
        assert ok.ap == 0.5 and ok.metrics["AP50"] is None and ok.latency_median_ms == 1.5
        assert viewer.latency_samples(ok.id) == [1.0, 2.0, 1.5]
        assert viewer.class_ap(ok.id) == [{"class_name": "a", "ap": 0.4, "ap50": 0.6}]
        assert viewer.history(model="m", backend="onnxruntime", precision="fp16", batch=1, imgsz=320,
                              device="cuda:0")[0]["run_id"] == run_id
        with pytest.raises(Exception, match="read-only transaction"), viewer.session() as session:
            session.execute(text("DELETE FROM runs"))


def test_dashboard_reads_postgres(pg_url, monkeypatch):
    pytest.importorskip("streamlit", reason="the dashboard extra is not installed")
    from streamlit.testing.v1 import AppTest

    from test_dashboard import APP, PAGES, _open, build_store

    build_store(pg_url)
    monkeypatch.setenv("DETBENCH_DB", pg_url)
    for page in ("overview", "compare", "trends"):
        at = _open(AppTest.from_file(str(APP), default_timeout=60), page)
        assert at.title[0].value and at.get("plotly_chart"), page
    assert PAGES


WRITER = textwrap.dedent("""\
    import os, sys, time
    from harness.store import Store
    url, name, go, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = Store(url)
    while not os.path.exists(go):
        time.sleep(0.01)
    cells = [dict(key=f"{name}/c{i}", position=i, model=name, backend="pytorch", precision="fp32",
                  batch=1, imgsz=64, device="cpu", nms="none", params={}) for i in range(n)]
    run_id = store.create_run(name=name, matrix_path=None, matrix_hash="h", matrix_yaml="y",
                              git_sha=None, detbench_version="0", environment={}, cells=cells)
    for cell in store.cells_to_run(run_id):
        store.mark_running(cell.id)
        store.record_result(cell.id, status="ok", metrics={"AP": cell.position / 100},
                            samples={"model": [float(k) for k in range(40)], "e2e": [1.0] * 10},
                            class_ap=[{"class_name": f"k{k}", "ap": 0.1, "ap50": 0.2} for k in range(3)],
                            telemetry_samples=[{"t_s": k * 0.02, "power_w": 100.0} for k in range(4)])
    store.finish_run(run_id, "finished")
    print(run_id)
""")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_writers_lose_and_duplicate_no_row(backend, tmp_path, request):
    """Two processes, each a whole run, writing at the same time into one store."""
    url = f"sqlite:///{tmp_path / 'shared.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    from harness.store import Store
    from harness.store.schema import Cell, ClassAP, LatencySample, Run, TelemetrySample

    with Store(url) as store:  # the schema exists before the race (its creation is tested above)
        existing = {run.id for run in store.list_runs()}
    (tmp_path / "writer.py").write_text(WRITER)
    go, n = tmp_path / "go", 25
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), url, name, str(go), str(n)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("writer_a", "writer_b")]
    time.sleep(3)  # both have opened the store
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    run_ids = {out.strip() for out, _ in outs}
    with Store(url, readonly=True) as store, store.session() as s:
        new = {run.id for run in store.list_runs()} - existing
        assert new == run_ids and len(new) == 2

        def count(model, *where):
            return s.scalar(select(func.count()).select_from(model).where(*where))

        cells = s.scalars(select(Cell).where(Cell.run_id.in_(new))).all()
        assert len(cells) == 2 * n and {c.status for c in cells} == {"ok"}
        assert sorted(c.key for c in cells) == sorted(f"{name}/c{i}" for name in ("writer_a", "writer_b")
                                                      for i in range(n))
        ids = [c.id for c in cells]
        assert count(LatencySample, LatencySample.cell_id.in_(ids)) == 2 * n * 50
        assert count(ClassAP, ClassAP.cell_id.in_(ids)) == 2 * n * 3
        assert count(TelemetrySample, TelemetrySample.cell_id.in_(ids)) == 2 * n * 4
        assert count(Run, Run.id.in_(new), Run.status == "finished") == 2
        assert all(c.ap == c.position / 100 for c in cells)


@pytest.mark.skipif(not has_module("mmyolo"), reason="needs the mmyolo stack (extra 'mmyolo')")
def test_detbench_run_show_and_resume_on_postgres(pg_url, tmp_path):
    (tmp_path / "m.yaml").write_text(
        "name: pg-tiny\nmodels: [{name: yolov8_n, checkpoint: random}]\nbackends: [pytorch]\n"
        "batch_sizes: [1]\nimage_sizes: [64]\ndataset: {synth: {images: 2, seed: 5, size: 96}}\n"
        "timing: {warmup: 1, iterations: 3}\n")
    r = run_cli("run", "m.yaml", "--db", pg_url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    shown = json.loads(run_cli("show", "latest", "--json", "--db", pg_url, cwd=tmp_path).stdout)
    assert shown["run"]["name"] == "pg-tiny" and shown["run"]["status"] == "finished"
    (cell,) = shown["cells"]
    assert cell["status"] == "ok" and len(cell["latency"]) and cell["metrics"]["AP"] is not None
    again = run_cli("run", "--resume", shown["run"]["id"], "--db", pg_url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    after = json.loads(run_cli("show", shown["run"]["id"], "--json", "--db", pg_url, cwd=tmp_path).stdout)
    assert after["cells"][0]["finished_at"] == cell["finished_at"]  # nothing redone


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_unreachable_database_is_one_line_and_writes_nothing(tmp_path, executor):
    if executor == "ray" and not has_module("ray"):
        pytest.fail("ray is not installed: pip install -e '.[ray]'")
    (tmp_path / "m.yaml").write_text("models: [{name: yolov8_n, checkpoint: random}]\n"
                                     "backends: [pytorch]\ndataset: {synth: {images: 2}}\n")
    url = "postgresql+psycopg://detbench:s3cret@127.0.0.1:1/results"
    r = run_cli("run", "m.yaml", "--db", url, "--executor", executor, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "postgresql+psycopg://detbench:***@127.0.0.1:1/results cannot be opened" in lines[0]
    assert "Connection refused" in lines[0] and "check host and port" in lines[0]
    assert "s3cret" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]
