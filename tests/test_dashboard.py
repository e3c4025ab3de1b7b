"""The Streamlit dashboard (dashboard/) under streamlit.testing.v1.AppTest, its analysis helpers,
the HTML export, and the `detbench dashboard` launcher.

The store is filled through ``Store.create_run`` + ``record_result`` with synthetic, deterministic
cells (``build_store``), which ``test_dashboard_browser.py`` reuses; one slow test renders every page
against a real ``detbench run``.
"""
from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

from harness import report
from harness.store import Store

pytest.importorskip("streamlit", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')")
pytest.importorskip("plotly", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')")

from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboard" / "app.py"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dashboard import analysis  # noqa: E402

PAGES = {"overview": "views/overview.py", "compare": "views/compare.py", "trends": "views/trends.py",
         "alignment": "views/alignment.py", "details": "views/details.py", "export": "views/export.py"}
TIMEOUT = 60

# -- a synthetic store ------------------------------------------------------------------------

MODELS = {"yolov8_n": 0.372, "yolox_s": 0.405}
BACKEND_MS = {("pytorch", "fp32"): 6.1, ("pytorch", "fp16"): 4.4, ("onnxruntime", "fp32"): 4.8,
              ("onnxruntime", "fp16"): 3.6, ("onnxruntime", "int8"): 3.0, ("tensorrt", "fp32"): 2.3,
              ("tensorrt", "fp16"): 1.2, ("tensorrt", "int8"): 0.85}
AP_DROP = {"fp32": 0.0, "fp16": 0.001, "int8": 0.017}
REGRESSED = ("yolov8_n", "onnxruntime", "fp16", 1)  # slower in the last run: a change point
CLASSES = ("circle", "square", "triangle")


def _plan():
    cells = []
    for model in MODELS:
        for (backend, precision) in [*BACKEND_MS, ("pytorch", "int8")]:
            for batch in (1, 4):
                cell = dict(key=f"{model}/{backend}/{precision}/b{batch}/s640/cuda:0/nms-none",
                            position=len(cells), model=model, backend=backend, precision=precision,
                            batch=batch, imgsz=640, device="cuda:0", nms="none",
                            params={"batch": batch})
                if backend == "pytorch" and precision == "int8":
                    cell.update(status="skipped", error="pytorch has no int8 path")
                cells.append(cell)
    return cells


def _latency(samples, batch):
    ordered = sorted(samples)
    n = len(ordered)
    median = ordered[n // 2]
    mad = sorted(abs(v - median) for v in samples)[n // 2]
    mean = sum(samples) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in samples) / n)
    q = lambda p: ordered[min(n - 1, int(p * n))]  # noqa: E731
    return {"n": n, "median_ms": median, "mean_ms": mean, "std_ms": std, "mad_ms": mad,
            "min_ms": ordered[0], "max_ms": ordered[-1], "p90_ms": q(0.9), "p95_ms": q(0.95),
            "p99_ms": q(0.99), "cv": std / mean, "throughput_ips": 1000 * batch / median,
            "batch": batch, "unstable": False, "timer": "cuda_event"}


def build_store(url: str, runs: int = 5, *, alignment: bool = False) -> list[str]:
    """``runs`` runs of a 2-model × 8-config × batch 1/4 matrix on a pretend GPU: ok cells with raw
    samples, telemetry and per-class AP, skipped pytorch int8, one failed TensorRT int8 build, and a
    latency regression of ``REGRESSED`` in the last run.  Deterministic.  Returns run ids."""
    rng = random.Random(0)
    ids = []
    with Store(url) as store:
        for r in range(runs):
            run_id = store.create_run(
                name=f"nightly-{r + 1}", matrix_path="matrices/nightly.yaml", matrix_hash=f"h{r}",
                matrix_yaml="name: nightly\nbackends: [pytorch, onnxruntime, tensorrt]\n",
                git_sha=f"{r + 1:02d}c0ffee{r:02d}", detbench_version="0.1.0",
                environment={"host": "bench-01", "gpu": "NVIDIA H100 80GB HBM3", "driver": "560.35",
                             "packages": {"torch": "2.13.0", "onnxruntime-gpu": "1.22.0",
                                          "tensorrt": "10.9.0"}},
                cells=_plan())
            for cell in store.cells(run_id):
                if cell.status == "skipped":
                    continue
                if cell.backend == "tensorrt" and cell.precision == "int8" and cell.batch == 4:
                    store.record_result(cell.id, status="failed", stage="build", duration_s=41.0,
                                        error="RuntimeError: TensorRT engine build failed: no "
                                              "implementation for layer /model.22/Concat",
                                        log_tail="[TRT] [E] 10: Could not find any implementation\n"
                                                 "[TRT] [E] 2: [builder.cpp::buildSerializedNetwork]")
                    continue
                base = BACKEND_MS[(cell.backend, cell.precision)] * (1 + 0.7 * (cell.batch - 1))
                if cell.model == "yolox_s":
                    base *= 1.9
                if (cell.model, cell.backend, cell.precision, cell.batch) == REGRESSED and r == runs - 1:
                    base *= 1.3
                base *= 1 + 0.01 * rng.uniform(-1, 1)
                samples = [base * (1 + 0.02 * rng.gauss(0, 1)) for _ in range(60)]
                e2e = [v + 2.5 * cell.batch + rng.uniform(0, 0.4) for v in samples[:30]]
                ap = MODELS[cell.model] - AP_DROP[cell.precision] + 0.0005 * rng.uniform(-1, 1)
                metrics = {"AP": ap, "AP50": ap + 0.18, "AP75": ap + 0.03, "AP_small": ap - 0.2,
                           "AP_medium": ap, "AP_large": ap + 0.15, "AR100": ap + 0.2,
                           "detections": 3000, "dropped_labels": 0}
                if alignment and cell.backend != "pytorch":
                    metrics["alignment"] = {
                        "reference": "pytorch/fp32", "matched": 2900,
                        "attribution": {"score threshold": 41, "nms order": 12, "box drift": 7},
                        "iou_hist": {"edges": [0.5, 0.7, 0.9, 1.0], "counts": [3, 20, 2877]},
                        "score_delta_hist": {"edges": [-0.02, 0.0, 0.02], "counts": [120, 140]},
                        "worst_images": [{"image_id": 7, "missing": 3, "extra": 1}]}
                telemetry = [{"t_s": i * 0.02, "power_w": 300 + 40 * math.sin(i / 5),
                              "sm_clock_mhz": 1980 - (i > 40) * 90, "mem_clock_mhz": 2619,
                              "temp_c": 55 + i * 0.1, "mem_used_mb": 4200, "gpu_util": 97}
                             for i in range(60)]
                store.record_result(
                    cell.id, status="ok", duration_s=30.0, metrics=metrics,
                    latency=_latency(samples, cell.batch), latency_e2e=_latency(e2e, cell.batch),
                    telemetry={"power_avg_w": 310.0, "energy_per_image_j": 0.4},
                    provenance={"torch": "2.13.0", "device": "cuda:0", "config_hash": "abc123"},
                    samples={"model": samples, "e2e": e2e}, telemetry_samples=telemetry,
                    class_ap=[{"class_name": n, "ap": ap + d, "ap50": ap + d + 0.2}
                              for n, d in zip(CLASSES, (0.03, -0.02, 0.0))])
            store.finish_run(run_id, "finished")
            ids.append(run_id)
    return ids


@pytest.fixture(scope="module")
def db_url(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'results.db'}"
    build_store(url)
    return url


@pytest.fixture
def app(db_url, monkeypatch):
    monkeypatch.setenv("DETBENCH_DB", db_url)
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def _texts(at) -> str:
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "success", "title", "subheader", "code"):
        parts += [str(e.value) for e in at.get(kind)]
    return "\n".join(parts)


def _open(at, page: str, **params):
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    if page != "overview":
        at.switch_page(PAGES[page]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _heatmap(at):
    import json

    charts = at.get("plotly_chart")
    assert charts, "no plotly chart"
    return json.loads(charts[0].proto.spec)


# -- pages ------------------------------------------------------------------------------------


def test_overview_heatmap_failures_and_runs(app):
    at = _open(app, "overview")
    assert at.title[0].value == "Overview"
    spec = _heatmap(at)
    assert spec["data"][0]["type"] == "heatmap"
    assert len(spec["data"][0]["y"]) == 18  # 2 models × 9 backend·precision configs
    assert spec["data"][0]["x"] == ["b1 · 640px", "b4 · 640px"]
    frames = at.dataframe
    assert len(frames) == 2  # failures, runs
    failures, runs = (f.value for f in frames)
    assert set(failures["status"]) == {"failed", "skipped"} and "build" in set(failures["stage"])
    assert len(runs) == 5
    assert any("log tail" in e.value for e in at.markdown)
    assert "[TRT] [E] 10" in _texts(at)


def test_filter_changes_what_is_shown(app):
    at = _open(app, "overview")
    before = _heatmap(at)["data"][0]["y"]
    at.multiselect(key="backend").set_value(["tensorrt"]).run()
    assert not at.exception
    after = _heatmap(at)["data"][0]["y"]
    assert len(after) < len(before) and all("tensorrt" in y for y in after)
    at.multiselect(key="batch").set_value([1]).run()
    assert _heatmap(at)["data"][0]["x"] == ["b1 · 640px"]
    assert "6 of 36 cells" in _texts(at)


def test_filters_come_from_the_url(app, db_url):
    first = Store(db_url, readonly=True).list_runs()[-1]
    at = _open(app, "overview", run=first.id, model="yolox_s", precision=["fp16", "int8"])
    assert at.selectbox(key="run").value == first.id
    assert at.multiselect(key="model").value == ["yolox_s"]
    ys = _heatmap(at)["data"][0]["y"]
    assert ys and all(y.startswith("yolox_s") and y.split(" · ")[2] in ("fp16", "int8") for y in ys)
    assert first.id in _texts(at)


def test_compare_pareto_throughput_and_classic_table(app):
    at = _open(app, "compare")
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    import json

    scatter = json.loads(charts[0].proto.spec)
    assert any(t.get("name") == "Pareto frontier" for t in scatter["data"])
    lines = json.loads(charts[1].proto.spec)
    assert lines["data"] and all(t["type"] == "scatter" for t in lines["data"])
    classic = at.dataframe[-1].value
    assert list(classic.columns) == report.classic_columns()
    assert len(classic) == 6  # 2 models × 3 backends
    assert {b.label for b in at.get("download_button")} >= {"Download CSV", "Download HTML"}
    at.multiselect(key="model").set_value(["yolov8_n"]).run()
    assert len(at.dataframe[-1].value) == 3


def test_trends_marks_the_regression(app):
    model, backend, precision, batch = REGRESSED
    key = f"{model}/{backend}/{precision}/b{batch}/s640/cuda:0/nms-none"
    at = _open(app, "trends", cell=key)
    assert at.selectbox(key="cell").value == key
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # AP and median latency by default
    assert "e-divisive" in _texts(at)
    assert any("change points" in w.value.lower() and "median_ms" in w.value for w in at.warning)
    at.multiselect(key="metrics").set_value(["images/s"]).run()
    assert len(at.get("plotly_chart")) == 1


def test_alignment_without_data_is_friendly(app):
    at = _open(app, "alignment")
    assert any("No alignment data for this run" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_alignment_with_data(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'aligned.db'}"
    build_store(url, runs=1, alignment=True)
    monkeypatch.setenv("DETBENCH_DB", url)
    at = _open(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "alignment")
    assert len(at.get("plotly_chart")) == 3  # causes, IoU histogram, score-delta histogram
    assert len(at.dataframe) >= 1  # worst images


def test_details_environment_telemetry_latency(app):
    at = _open(app, "details")
    import json

    kinds = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert "NVML telemetry during the timed loop" in kinds
    assert "raw latency samples" in kinds and "per-class AP" in kinds
    assert at.get("json")  # environment, provenance
    failed = "yolov8_n/tensorrt/int8/b4/s640/cuda:0/nms-none"
    at.selectbox(key="cell").set_value(failed).run()
    assert not at.exception
    assert "TensorRT engine build failed" in _texts(at)


def test_export_every_table(app):
    at = _open(app, "export")
    for name in ("cells", "classic", "frontier", "failures", "runs"):
        at.selectbox(key="table").set_value(name).run()
        assert not at.exception
        assert at.dataframe
        assert [b.label for b in at.get("download_button")] == [
            "Download CSV", "Download Markdown", "Download HTML"]


def test_every_page_while_a_run_is_in_progress(tmp_path, monkeypatch):
    """Only pending/skipped cells, nothing measured yet: every page renders, with hints."""
    url = f"sqlite:///{tmp_path / 'running.db'}"
    with Store(url) as store:
        store.create_run(name="in-progress", matrix_path=None, matrix_hash="h", matrix_yaml="{}\n",
                         git_sha=None, detbench_version="0.1.0", environment={}, cells=_plan()[:6])
    monkeypatch.setenv("DETBENCH_DB", url)
    for page in PAGES:
        at = _open(AppTest.from_file(str(APP), default_timeout=TIMEOUT), page)
        assert at.title[0].value
    assert analysis.cells_frame([]).empty


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_no_results_is_a_friendly_first_run_message(tmp_path, monkeypatch, make):
    path = tmp_path / "results.db"
    if make == "empty":
        Store(f"sqlite:///{path}").close()  # schema, no runs
    monkeypatch.setenv("DETBENCH_DB", f"sqlite:///{path}")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("detbench run matrices/demo.yaml" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_db_url_from_script_args(monkeypatch):
    from dashboard import context

    monkeypatch.setenv("DETBENCH_DB", "sqlite:///env.db")
    assert context.db_url(["--db", "sqlite:///x.db"]) == "sqlite:///x.db"
    assert context.db_url(["-q", "tests"]) == "sqlite:///env.db"
    monkeypatch.delenv("DETBENCH_DB")
    assert context.db_url([]) == "sqlite:///results.db"


@pytest.mark.slow
def test_every_page_on_a_real_run(tmp_path, monkeypatch):
    """A real `detbench run` of the trained fixture on CPU (PyTorch reference and ONNX Runtime),
    then every page renders without an exception, alignment included."""
    from conftest import ROOT, has_module, run_cli

    if not (has_module("mmyolo") and has_module("torch") and has_module("onnxruntime")):
        pytest.skip("needs torch, mmyolo and onnxruntime for a real run")
    fixture = ROOT / "fixtures" / "yolov8_synth"
    matrix = tmp_path / "tiny.yaml"
    matrix.write_text(f"name: fixture\nmodels: [{{name: yolov8_synth, config: {fixture / 'config.py'}, "
                      f"checkpoint: {fixture / 'yolov8_synth.pth'}}}]\n"
                      "backends: [pytorch, onnxruntime]\nprecisions: [fp32]\nbatch_sizes: [1]\n"
                      "image_sizes: [320]\ndevices: [cpu]\ndataset: {synth: {images: 8, seed: 2, size: 320}}\n"
                      "timing: {warmup: 1, iterations: 5}\ntimeout_s: 300\n")
    url = f"sqlite:///{tmp_path / 'real.db'}"
    done = run_cli("run", matrix, "--db", url, "--cache-dir", tmp_path / "cache", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    monkeypatch.setenv("DETBENCH_DB", url)
    for page in PAGES:
        at = _open(AppTest.from_file(str(APP), default_timeout=TIMEOUT), page)
        assert at.title[0].value
        if page == "details":  # a CPU cell: raw samples but no NVML telemetry
            assert any("No NVML telemetry" in i.value for i in at.info)
            assert len(at.get("plotly_chart")) >= 2
        if page == "alignment":  # the ONNX Runtime cell against its PyTorch reference
            assert len(at.get("plotly_chart")) == 3
            cell = next(sb for sb in at.selectbox if sb.label == "Cell")
            assert cell.value == "yolov8_synth/onnxruntime/fp32/b1/s320/cpu/nms-none"


# -- pieces -------------------------------------------------------------------------------------


def test_pareto_front():
    import pandas as pd

    frame = pd.DataFrame({"key": list("abcdef"), "ms": [1.0, 2.0, 2.0, 3.0, 4.0, None],
                          "AP": [0.30, 0.35, 0.34, 0.35, 0.40, 0.9]})
    front = analysis.pareto_front(frame, "ms", "AP")
    assert list(front["key"]) == ["a", "b", "e"]  # c: same ms, lower AP; d: slower, same AP; f: no ms


def test_change_points_rule():
    flat = analysis.change_points([10.0, 10.1, 9.9, 10.0, 10.05, 13.0, 10.0])
    assert list(flat["change"]) == [False, False, False, False, False, True, False]
    assert math.isnan(flat["lower"][2]) and flat["lower"][3] < 10 < flat["upper"][3]
    # identical history: the 1 % floor keeps rounding noise from flagging
    same = analysis.change_points([0.372] * 5 + [0.3721, 0.34])
    assert list(same["change"]) == [False] * 6 + [True]
    assert list(analysis.change_points([1.0, None, 2.0])["change"]) == [False, False, False]


def test_alignment_lookup_prefers_the_store():
    from types import SimpleNamespace

    cell = SimpleNamespace(id=3, metrics={"alignment": {"from": "metrics"}})
    assert analysis.alignment_of(object(), cell) == {"from": "metrics"}
    store = SimpleNamespace(alignment=lambda cid: {"from": "store", "id": cid})
    assert analysis.alignment_of(store, cell) == {"from": "store", "id": 3}
    assert analysis.alignment_of(object(), SimpleNamespace(id=1, metrics=None)) is None


def test_to_html_escapes_and_formats():
    rows = [{"model": "<b>x</b>", "AP": 0.123456, "status": "failed", "note": "a & b"}]
    page = report.to_html(rows, ["model", "AP", "status", "note"], title="t <1>")
    assert page.startswith("<!DOCTYPE html>") and "<title>t &lt;1&gt;</title>" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "0.1235" in page and "a &amp; b" in page
    assert '<tr class="failed">' in page


def test_existing_exports_unchanged_and_classic_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    run_id = build_store(url, runs=1)[0]
    cells = Store(url, readonly=True).cells(run_id)
    rows = [report.cell_row(c) for c in cells]
    assert report.to_csv(rows).splitlines()[0] == ",".join(report.COLUMNS)
    assert report.to_markdown(rows).splitlines()[0] == "| " + " | ".join(report.COLUMNS) + " |"
    html = report.to_html(rows)
    assert html.count("<tr") == len(rows) + 1
    classic = report.classic_table(cells)
    assert len(classic) == 6 and list(classic[0]) == report.classic_columns()
    trt8 = next(r for r in classic if r["model"] == "yolov8_n" and r["backend"] == "tensorrt")
    assert trt8["b1 int8 ms"] is not None and trt8["b4 int8 ms"] is None  # failed build
    pt = next(r for r in classic if r["backend"] == "pytorch")
    assert pt["b1 int8 AP"] is None  # skipped


def test_launch_command(monkeypatch):
    from harness import dashboard_cli

    seen = {}

    def fake_call(cmd, env):
        seen.update(cmd=cmd, env=env)
        return 0

    monkeypatch.setattr(dashboard_cli, "_call", fake_call)
    assert dashboard_cli.launch("sqlite:///x.db", 8765) == 0
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("dashboard/app.py")
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[-3:] == ["--", "--db", "sqlite:///x.db"]
    from harness.errors import UserError

    with pytest.raises(UserError, match="port"):
        dashboard_cli.launch("sqlite:///x.db", 70000)
