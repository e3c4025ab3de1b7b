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


def _plan(batches=(1, 4)):
    cells = []
    for model in MODELS:
        for (backend, precision) in [*BACKEND_MS, ("pytorch", "int8")]:
            for batch in batches:
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


def build_store(url: str, runs: int = 5, *, alignment: bool = False, batches=(1, 4)) -> list[str]:
    """``runs`` runs of a 2-model × 8-config × ``batches`` matrix on a pretend GPU: ok cells with
    raw samples, telemetry and per-class AP, skipped pytorch int8, failed TensorRT int8 builds
    at every batch above 1, and a latency regression of ``REGRESSED`` in the last run.
    Deterministic.  Returns run ids."""
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
                cells=_plan(batches))
            for cell in store.cells(run_id):
                if cell.status == "skipped":
                    continue
                if cell.backend == "tensorrt" and cell.precision == "int8" and cell.batch > 1:
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
    assert list(classic.columns) == report.classic_columns([1, 4], ["fp32", "fp16", "int8"])
    assert len(classic) == 6  # 2 models × 3 backends
    assert {b.label for b in at.get("download_button")} >= {"CSV", "HTML", "XLSX"}
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


ROTATED_MODEL = "rtmdet_r_tiny"
ROTATED_CLASSES = ("rectangle", "ellipse", "triangle", "diamond")


def build_rotated_store(url: str) -> str:
    """One run of a rotated model (#19) on CPU: the PyTorch reference and ONNX Runtime fp32 / fp16,
    rotated-IoU AP and DOTA mAP50 in the stats fields, per-class AP, and an alignment record with
    the rotated histograms.  Returns the run id."""
    rng = random.Random(1)
    keys = [("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16")]
    cells = [dict(key=f"{ROTATED_MODEL}/{b}/{p}/b1/s256/cpu/nms-none", position=i, model=ROTATED_MODEL,
                  backend=b, precision=p, batch=1, imgsz=256, device="cpu", nms="none",
                  params={"batch": 1, "box_type": "rotated"}) for i, (b, p) in enumerate(keys)]
    with Store(url) as store:
        run_id = store.create_run(name="rotated", matrix_path="matrices/rotated.yaml", matrix_hash="r",
                                  matrix_yaml="name: rotated\n", git_sha="0123abcd", detbench_version="0.1.0",
                                  environment={"host": "cpu-box", "cpu": "x86"}, cells=cells)
        for i, cell in enumerate(store.cells(run_id)):
            ap = 0.612 - 0.004 * i
            samples = [20.0 + i + rng.uniform(0, 0.5) for _ in range(20)]
            store.record_result(
                cell.id, status="ok", duration_s=12.0,
                metrics={"AP": ap, "AP50": ap + 0.3, "AP75": ap + 0.05, "mAP50_07": ap + 0.28,
                         "mAP50_area": ap + 0.29, "detections": 120, "dropped_labels": 0,
                         "box_type": "rotated", "metric": "rotated IoU"},
                latency=_latency(samples, 1), samples={"model": samples},
                provenance={"device": "cpu", "eval": {"score_thr": 0.05, "metric": "rotated IoU"}},
                class_ap=[{"class_name": n, "ap": ap + d, "ap50": ap + d + 0.3}
                          for n, d in zip(ROTATED_CLASSES, (0.02, -0.01, 0.0, -0.03))])
            if cell.backend != "pytorch":
                store.record_alignment(cell.id, {
                    "schema": 1, "status": "ok", "reason": None, "cell": cell.key,
                    "reference": cells[0]["key"], "match_iou": 0.5, "box_type": "rotated",
                    "iou": "rotated", "images": 6, "images_replayed": 6, "reference_detections": 40,
                    "candidate_detections": 41, "matched": 39, "missing": 1, "extra": 2,
                    "matched_pct": 92.9, "class_flips": 0,
                    "attribution": {"pre_topk": 0, "score_thr": 1, "keep_topk": 0, "nms": 0,
                                    "numeric": 2, "other": 0},
                    "iou_hist": {"edges": [0.5, 0.9, 0.99, 1.0], "counts": [1, 3, 35]},
                    "score_delta_hist": {"edges": [-1.0, 0.0, 1.0], "counts": [20, 19]},
                    "angle_delta_hist": {"edges": [-90.0, -0.001, 0.001, 90.0], "counts": [4, 30, 5]},
                    "center_shift_hist": {"edges": [0.0, 0.002, 0.1, 1e4], "counts": [30, 8, 1]},
                    "worst_images": [{"image_id": 2, "missing": 1, "extra": 2}],
                    "ap_delta": ap - 0.612, "ap_ref": 0.612, "ap": ap})
        store.finish_run(run_id, "finished")
    return run_id


def test_rotated_cells_on_every_page(tmp_path, monkeypatch):
    """#19: a run of rotated cells says on every page that its AP is rotated-IoU AP; the cells
    table has the box type and DOTA's mAP50; alignment shows the angle / centre histograms."""
    import json

    url = f"sqlite:///{tmp_path / 'rotated.db'}"
    build_rotated_store(url)
    monkeypatch.setenv("DETBENCH_DB", url)
    for page in PAGES:
        at = _open(AppTest.from_file(str(APP), default_timeout=TIMEOUT), page)
        assert any("rotated-IoU AP" in i.value for i in at.info), page
        if page == "overview":
            headline = "".join(str(h.proto.body) for h in at.get("html"))
            assert "<th>rotated AP</th>" in headline and "<th>Δ rotated AP</th>" in headline
        if page == "compare":
            scatter = json.loads(at.get("plotly_chart")[0].proto.spec)
            assert scatter["layout"]["yaxis"]["title"]["text"].startswith("rotated AP")
        if page == "alignment":
            titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
            assert "angle difference of matched pairs (degrees, rotated boxes)" in titles
            assert "centre shift of matched pairs (pixels, rotated boxes)" in titles
            assert any("rotated IoU" in c.value for c in at.caption)
        if page == "details":
            assert any("rotated IoU" in m.value for m in at.markdown)
        if page == "export":
            at.selectbox(key="table").set_value("cells").run()
            frame = at.dataframe[0].value
            assert {"boxes", "mAP50_07", "mAP50_area"} <= set(frame.columns)
            assert set(frame["boxes"]) == {"rotated"}
            assert frame["mAP50_07"].tolist() == pytest.approx([0.892, 0.888, 0.884])


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
        assert [b.label for b in at.get("download_button")] == ["CSV", "Markdown", "HTML", "XLSX"]


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
            import json

            titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
            assert "per-class ΔAP vs the reference" in titles and len(titles) == 4
            assert any("against **yolov8_synth/pytorch/fp32" in m.value for m in at.markdown)
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
    assert len(classic) == 6 and list(classic[0]) == report.classic_columns(cells=cells)
    trt8 = next(r for r in classic if r["model"] == "yolov8_n" and r["backend"] == "tensorrt")
    assert trt8["b1 int8 ms"] is not None and trt8["b4 int8 ms"] is None  # failed build
    pt = next(r for r in classic if r["backend"] == "pytorch")
    assert pt["b1 int8 AP"] is None  # skipped


def test_show_and_export_label_rotated_cells(tmp_path, capsys):
    """#19: `detbench show` / `export` of a rotated run: a box-type column, DOTA mAP50 columns and
    a line saying the AP is rotated-IoU AP; a horizontal run's exports keep their columns."""
    import csv
    import io
    import json

    from harness import cli

    url = f"sqlite:///{tmp_path / 'rotated.db'}"
    run_id = build_rotated_store(url)
    assert cli.main(["show", run_id, "--db", url]) == 0
    out = capsys.readouterr().out
    assert "boxes" in out and "mAP50_07" in out and "rotated" in out and "0.8920" in out
    assert report.ROTATED_METRICS in " ".join(out.split())
    assert cli.main(["export", run_id, "--format", "csv", "--db", url]) == 0
    text = capsys.readouterr().out
    assert f"# metrics: {report.ROTATED_METRICS}" in text
    rows = list(csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#")))
    assert list(rows[0]) == report.columns(Store(url, readonly=True).cells(run_id))
    assert {r["boxes"] for r in rows} == {"rotated"} and float(rows[0]["mAP50_07"]) == pytest.approx(0.892)
    assert float(rows[0]["AP"]) == pytest.approx(0.612)
    assert cli.main(["export", run_id, "--format", "md", "--db", url]) == 0
    md = capsys.readouterr().out
    assert "| boxes |" in md and "| mAP50_07 | mAP50_area |" in md and "**metrics**: rotated boxes" in md
    assert cli.main(["export", run_id, "--format", "json", "--db", url]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {c["metrics"]["box_type"] for c in doc["cells"]} == {"rotated"}
    assert doc["alignment"][f"{ROTATED_MODEL}/onnxruntime/fp32/b1/s256/cpu/nms-none"]["angle_delta_hist"]
    assert doc["header"]["metrics"] == report.ROTATED_METRICS
    plain = f"sqlite:///{tmp_path / 'plain.db'}"
    plain_run = build_store(plain, runs=1)[0]
    with Store(plain, readonly=True) as store:
        run, cells = store.get_run(plain_run), store.cells(plain_run)
    assert report.columns(cells) == list(report.COLUMNS)
    assert "metrics" not in report.run_header(run, cells)


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


# -- the headline, real batch sizes, exports with a run header (issue #14) ------------------------


def _cells(url):
    store = Store(url, readonly=True)
    run = store.list_runs()[0]
    return store, run, store.cells(run.id)


def _ms_img(cell):
    return cell.latency["median_ms"] / cell.batch


@pytest.mark.parametrize("batches", [(1, 8), (1, 2, 4, 16)])
def test_classic_table_uses_the_runs_batch_sizes(tmp_path, batches):
    url = f"sqlite:///{tmp_path / 'b.db'}"
    build_store(url, runs=1, batches=batches)
    _, _, cells = _cells(url)
    columns = report.classic_columns(cells=cells)
    assert [c for c in columns if c.endswith(" ms")] == [
        f"b{b} {p} ms" for b in batches for p in ("fp32", "fp16", "int8")]
    rows = report.classic_table(cells)
    assert len(rows) == 6
    for cell in cells:  # every ok cell's numbers land in its own column, nothing else does
        row = next(r for r in rows if (r["model"], r["backend"]) == (cell.model, cell.backend))
        value = row[f"b{cell.batch} {cell.precision} ms"]
        assert value == (cell.latency["median_ms"] if cell.status == "ok" else None)
    # and the CLI's XLSX carries the same columns
    from openpyxl import load_workbook
    import io

    store, run, _ = _cells(url)
    book = load_workbook(io.BytesIO(report.export_run("xlsx", run, cells)))
    sheet = book["classic"]
    header_rows = [r for r in sheet.iter_rows(values_only=True) if r and r[0] == "model"]
    assert list(header_rows[0]) == columns


def test_headline_table_values_and_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    build_store(url, runs=1)
    _, _, cells = _cells(url)
    by = {(c.model, c.backend, c.precision, c.batch): c for c in cells}
    rows = report.headline_table(cells)  # default budget: 1 AP point
    for r in rows:
        cell = by[(r["model"], r["backend"], r["precision"], r["batch"])]
        ref = by[(r["model"], "pytorch", "fp32", r["batch"])]
        if cell.status != "ok":
            assert r["ms_per_image"] is None and r["speedup"] is None and not r["best"]
            continue
        assert r["ms_per_image"] == pytest.approx(_ms_img(cell))
        assert r["speedup"] == pytest.approx(_ms_img(ref) / _ms_img(cell))
        assert r["dAP"] == pytest.approx(cell.metrics["AP"] - ref.metrics["AP"])
        assert r["dAP_pct"] == pytest.approx(100 * r["dAP"] / ref.metrics["AP"])
    best = {(r["model"], r["batch"]): (r["backend"], r["precision"]) for r in rows if r["best"]}
    # TensorRT int8 is fastest but loses ~1.7 AP points: over a 1-point budget, fp16 wins
    assert best == {(m, b): ("tensorrt", "fp16") for m in MODELS for b in (1, 4)}
    loose = report.headline_table(cells, budget_points=2.0)
    best = {(r["model"], r["batch"]): (r["backend"], r["precision"]) for r in loose if r["best"]}
    assert best[("yolov8_n", 1)] == ("tensorrt", "int8")
    assert best[("yolov8_n", 4)] == ("tensorrt", "fp16")  # the b4 int8 build failed
    # fastest first within each batch; a filter keeps the reference from the whole run
    b1 = [r["ms_per_image"] for r in rows if r["batch"] == 1 and r["model"] == "yolov8_n"
          and r["ms_per_image"] is not None]
    assert b1 == sorted(b1)
    only_trt = [c for c in cells if c.backend == "tensorrt"]
    filtered = report.headline_table(only_trt, reference_cells=cells)
    assert all(r["speedup"] for r in filtered if r["status"] == "ok")


def _headline_tables(at) -> dict[int, list[dict]]:
    """The headline tables of a page (``st.html``): batch -> rows of {column: text}."""
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.row, self.head, self.cell = {}, None, None, None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "table":
                self.batch = int(attrs["data-batch"])
                self.tables[self.batch], self.head = [], []
            elif tag == "tr":
                self.row = []
            elif tag in ("th", "td"):
                self.cell = ""

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

        def handle_endtag(self, tag):
            if tag == "th":
                self.head.append(self.cell)
                self.cell = None
            elif tag == "td":
                self.row.append(self.cell)
                self.cell = None
            elif tag == "tr" and self.row:
                self.tables[self.batch].append(dict(zip(self.head, self.row)))

    parser = Tables()
    for element in at.get("html"):
        if "detbench-headline" in element.proto.body:
            parser.feed(element.proto.body)
    return parser.tables


def test_headline_on_overview_and_compare(app, db_url):
    store = Store(db_url, readonly=True)
    run = store.list_runs()[0]
    cells = store.cells(run.id)
    ref = {(c.model, c.batch): c for c in cells if (c.backend, c.precision) == ("pytorch", "fp32")}
    for page in ("overview", "compare"):
        at = _open(AppTest.from_file(str(APP), default_timeout=TIMEOUT), page)
        tables_ = _headline_tables(at)
        assert sorted(tables_) == [1, 4]  # one per batch size
        b1 = tables_[1]
        assert list(b1[0])[:2] == ["", "backend · precision"] and "ΔAP %" in b1[0]
        row = next(r for r in b1 if r["model"] == "yolov8_n"
                   and r["backend · precision"] == "tensorrt · fp16")
        cell = next(c for c in cells if (c.model, c.backend, c.precision, c.batch)
                    == ("yolov8_n", "tensorrt", "fp16", 1))
        assert row["speed-up"] == f"{_ms_img(ref[('yolov8_n', 1)]) / _ms_img(cell):.2f}×"
        assert row["ΔAP"] == f"{cell.metrics['AP'] - ref[('yolov8_n', 1)].metrics['AP']:+.4f}"
        assert row["note"].startswith("★")
        assert len(tables_[1]) == len([c for c in cells if c.batch == 1])
    # the heatmap defaults to the headline's numbers: speed-up, with ms per image written in
    spec = _heatmap(_open(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "overview"))
    assert spec["layout"]["title"]["text"].startswith("speed-up")
    assert any("ms/img" in t and "ΔAP" in t for row in spec["data"][0]["text"] for t in row)


def test_counters_follow_the_filters(app):
    at = _open(app, "overview")
    assert at.metric[0].value == "36"
    at.multiselect(key="backend").set_value(["tensorrt"]).run()
    values = {m.label: m.value for m in at.metric}
    assert values["cells"] == "12" and values["failed"] == "2" and values["ok"] == "10"


def test_colours_fixed_per_backend_precision_across_filters(app):
    import json

    from dashboard import charts

    def colours(at):
        scatter = json.loads(at.get("plotly_chart")[0].proto.spec)
        return {t["name"]: t["marker"]["color"] for t in scatter["data"]
                if t.get("legendgroup") not in (None, "symbols") and t["name"] != "Pareto frontier"}

    at = _open(app, "compare")
    everything = colours(at)
    assert everything["tensorrt · int8"] == charts.CONFIG_COLORS["tensorrt · int8"]
    at.multiselect(key="precision").set_value(["int8"]).run()
    only = colours(at)
    assert set(only) == {"onnxruntime · int8", "tensorrt · int8"}
    assert all(only[k] == everything[k] for k in only)
    assert len(set(charts.CONFIG_COLORS.values())) == len(charts.CONFIG_COLORS)
    assert charts.config_color("someback · fp8") == charts.config_color("someback · fp8")


def test_scatter_symbols_log_x_and_hover(app):
    import json

    at = _open(app, "compare", xscale="log")
    scatter = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert scatter["layout"]["xaxis"]["type"] == "log"
    legend = {t["name"] for t in scatter["data"] if t.get("legendgroup") == "symbols"}
    assert legend == {"batch 1", "batch 4"}
    trace = next(t for t in scatter["data"] if t["name"] == "onnxruntime · fp16"
                 and t.get("showlegend") is False)  # the points (the legend entry is separate)
    assert set(trace["marker"]["symbol"]) == {"circle", "square"}
    assert "ΔAP" in trace["hovertemplate"] and "speed-up" in trace["hovertemplate"]
    assert all(len(str(v).split(".")[-1]) <= 4 for row in trace["customdata"] for v in row[1:4])


def test_every_export_format_has_the_run_header(tmp_path):
    import io
    import json

    from openpyxl import load_workbook

    url = f"sqlite:///{tmp_path / 'x.db'}"
    build_store(url, runs=1)
    _, run, cells = _cells(url)
    header = report.run_header(run, cells)
    assert header["hardware"].startswith("NVIDIA H100 80GB HBM3 · driver 560.35")
    assert "torch 2.13.0" in header["versions"] and "tensorrt 10.9.0" in header["versions"]
    for fmt in ("csv", "md", "html", "json"):
        text = report.export_run(fmt, run, cells)
        assert run.id in text and "NVIDIA H100 80GB HBM3" in text and "torch 2.13.0" in text, fmt
    assert json.loads(report.export_run("json", run, cells))["header"] == header
    book = load_workbook(io.BytesIO(report.export_run("xlsx", run, cells)))
    assert book.sheetnames == ["cells", "headline", "classic"]
    for sheet in book.worksheets:
        top = {r[0]: r[1] for r in sheet.iter_rows(max_row=len(header), values_only=True)}
        assert top["run"] == header["run"] and top["hardware"] == header["hardware"]
    cells_sheet = list(book["cells"].iter_rows(values_only=True))
    first = cells_sheet[len(header) + 2]
    assert isinstance(first[report.COLUMNS.index("median_ms")], float)  # numbers stay numbers
    # the CSV header is comment lines a CSV reader skips
    import pandas as pd

    frame = pd.read_csv(io.StringIO(report.export_run("csv", run, cells)), comment="#")
    assert list(frame.columns) == list(report.COLUMNS) and len(frame) == len(cells)


def test_cli_export_xlsx(tmp_path):
    from conftest import run_cli
    from openpyxl import load_workbook

    url = f"sqlite:///{tmp_path / 'c.db'}"
    build_store(url, runs=1)
    out = tmp_path / "run.xlsx"
    done = run_cli("export", "latest", "--format", "xlsx", "-o", out, "--db", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert load_workbook(out)["headline"].max_row > 20
    refused = run_cli("export", "latest", "--format", "xlsx", "--db", url, cwd=tmp_path)
    assert refused.returncode == 2 and "-o FILE.xlsx" in refused.stderr and not refused.stdout
    assert len(refused.stderr.strip().splitlines()) == 1


def _add_run(url, *, status, name, created_hours_ago=0.0, random_weights=False):
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from harness.store.schema import Run

    plan = _plan()[:4]
    if random_weights:
        for c in plan:
            c["params"] = {**c["params"], "model_spec": {"checkpoint": "random"}}
    with Store(url) as store:
        run_id = store.create_run(name=name, matrix_path=None, matrix_hash="h", matrix_yaml="{}\n",
                                  git_sha=None, detbench_version="0.1.0", environment={},
                                  cells=plan)
        for cell in store.cells(run_id):
            if cell.status != "skipped":
                store.record_result(cell.id, status="ok", duration_s=1.0, metrics={"AP": 0.0},
                                    latency=_latency([1.0, 1.1, 0.9], cell.batch))
        if status == "finished":
            store.finish_run(run_id, "finished")
        if created_hours_ago:
            when = datetime.now(timezone.utc) - timedelta(hours=created_hours_ago)
            with store.session() as s:
                s.execute(update(Run).where(Run.id == run_id).values(created_at=when))
                from harness.store.schema import Cell

                s.execute(update(Cell).where(Cell.run_id == run_id)
                          .values(started_at=when, finished_at=when))
    return run_id


def test_latest_is_the_newest_finished_run_and_stale_runs_are_flagged(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 's.db'}"
    done = build_store(url, runs=1)[0]
    stale = _add_run(url, status="running", name="crashed", created_hours_ago=0)
    from datetime import datetime, timedelta, timezone

    from dashboard import context

    store = Store(url, readonly=True)
    runs = store.list_runs()
    assert runs[0].id == stale and context.default_run(runs).id == done
    later = datetime.now(timezone.utc) + timedelta(hours=5)
    assert context.stale_for(runs[0], store.cells(stale), now=later) > 4 * 3600
    assert context.stale_for(runs[0], store.cells(stale)) is None  # just started: not stale
    monkeypatch.setenv("DETBENCH_DB", url)
    at = _open(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "overview")
    assert done in _texts(at)  # the default is the finished run
    at = _open(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "overview", run=stale)
    assert "stale" not in _texts(at).lower()
    monkeypatch.setattr(context, "STALE_S", -1.0)  # everything idle counts as stale now
    at = _open(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "overview", run=stale)
    assert "its process probably died" in _texts(at) and f"--resume {stale}" in _texts(at)
    runs_table = at.dataframe[-1].value
    assert runs_table.loc[runs_table["id"] == stale, "status"].item() == "running (stale)"


def test_unknown_run_id_in_the_url_warns(app, db_url):
    at = _open(app, "overview", run="r20990101-000000-dead")
    assert any("NVIDIA H100 80GB HBM3 · driver 560.35" in c.value for c in at.sidebar.caption)
    assert any("r20990101-000000-dead" in w.value and "does not exist" in w.value for w in at.warning)
    latest = Store(db_url, readonly=True).list_runs()[0]
    assert latest.id in _texts(at)


def test_random_weights_and_unstable_latency_warnings(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _add_run(url, status="finished", name="random", random_weights=True)
    monkeypatch.setenv("DETBENCH_DB", url)
    at = _open(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "compare")
    assert any("Random weights" in w.value for w in at.warning)
    assert any("⚠ random weights (4)" in c.value for c in at.sidebar.caption)  # the run picker
    _, run, cells = _cells(url)
    assert "random weights in 4 cell(s)" in report.run_header(run, cells)["caveats"]


def test_alignment_summary_in_plain_words():
    record = {"cell": "m/onnxruntime/int8/b8", "reference": "m/pytorch/fp32/b1", "images": 100,
              "images_replayed": 32, "reference_detections": 10528, "matched": 9196, "missing": 1332,
              "extra": 1506, "matched_pct": 87.36, "class_flips": 122,
              "attribution": {"pre_topk": 0, "numeric": 919, "other": 1919}, "dominant_cause": "other",
              "ap_ref": 0.6078, "ap_delta": -0.0121,
              "lint": [{"code": "batch_variant", "message": "100 of 100 images differ"}],
              "notes": ["1919 differences on 68 images without decoded tensors ..."]}
    out = analysis.alignment_summary(record)
    assert "ΔAP **-0.0121** (-1.99 %)" in out["headline"]
    assert "87.4 % of the reference's 10,528 detections matched; 1,332 missing, 1,506 extra, 122 class flips" in out["headline"]
    assert "unexplained ('other'): 1,919 of 2,838" in out["headline"]
    assert out["warnings"][0].startswith("Only **32 of 100 images were replayed**")
    assert "batch_variant" in out["warnings"][1] and out["notes"] == record["notes"]


def test_alignment_page_headline_and_class_delta(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'aligned.db'}"
    build_store(url, runs=1, alignment=True)
    with Store(url) as store:
        cell = next(c for c in store.cells(store.list_runs()[0].id) if c.backend == "tensorrt"
                    and c.status == "ok")
        store.record_alignment(cell.id, {
            "cell": cell.key, "reference": "x", "images": 10, "images_replayed": 4, "missing": 900,
            "extra": 3, "reference_detections": 1000, "matched_pct": 10.0, "ap_ref": 0.4,
            "ap_delta": -0.1, "attribution": {"numeric": 3, "other": 900},
            "class_ap_delta": [{"class_name": "circle", "ap_ref": 0.5, "ap": 0.4, "ap_delta": -0.1}],
            "notes": ["the rest count as 'other'"]})
    monkeypatch.setenv("DETBENCH_DB", url)
    at = _open(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "alignment")
    assert at.selectbox(key="cell").value == cell.key  # the most differences first
    assert any("ΔAP **-0.1000**" in m.value for m in at.markdown)
    assert any("Only **4 of 10 images were replayed**" in w.value for w in at.warning)
    assert any("the rest count as 'other'" in i.value for i in at.info)
    import json

    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert "per-class ΔAP vs the reference" in titles


def test_differing_boxes_are_the_unmatched_ones():
    from dashboard.drawing import differing

    ref = [{"bbox": [0, 0, 10, 10], "score": 0.9, "category_id": 1},
           {"bbox": [50, 50, 10, 10], "score": 0.5, "category_id": 1}]
    cand = [{"bbox": [0.5, 0, 10, 10], "score": 0.88, "category_id": 1},
            {"bbox": [50, 50, 10, 10], "score": 0.5, "category_id": 2},  # a class flip
            {"bbox": [90, 90, 5, 5], "score": 0.1, "category_id": 1}]
    missing, extra = differing(ref, cand, 0.5)
    assert missing == [ref[1]] and extra == [cand[1], cand[2]]


def test_details_summary_has_no_float_fillna():
    import warnings

    from importlib import util

    spec = util.spec_from_file_location("details_page", ROOT / "dashboard" / "views" / "details.py")
    source = spec.loader.get_source("details_page").replace("\nmain()\n", "\n")
    scope: dict = {}
    exec(compile(source, "details.py", "exec"), scope)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = scope["_summary"]({"median_ms": 4.0, "n": 10}, None)
    assert frame.loc["median_ms", "model"] == "4" and frame.loc["median_ms", "e2e"] == "—"
    assert scope["_no_telemetry"](type("C", (), {"status": "pending", "device": "cuda"})()).startswith(
        "No NVML telemetry yet")


def test_page_icon_is_a_local_file():
    source = (ROOT / "dashboard" / "app.py").read_text()
    assert "page_icon=str(ICON)" in source and "http" not in source.split("ICON =")[1].split("\n")[0]
    assert (ROOT / "dashboard" / "static" / "icon.png").stat().st_size > 100
