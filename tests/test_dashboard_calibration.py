"""The int8 calibration study on the dashboard (#18): AP vs calibration method and size.

A store holds a run shaped like ``matrices/int8_calibration_study.yaml`` (PyTorch and ONNX Runtime
fp32, ONNX Runtime int8 once per method × size), written through ``Store.create_run`` +
``record_result``; the Compare page must chart and tabulate it, read through the store API.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.store import Store

pytest.importorskip("streamlit", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')")
pytest.importorskip("plotly", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')")

from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("minmax", "entropy", "percentile", "mse")
SIZES = (32, 128, 512)
FP32_AP = 0.6081


def _ap(method: str, size: int) -> float:
    """A made-up but distinct AP per point (clipping methods lose less, more images help minmax)."""
    loss = {"minmax": 0.013, "entropy": 0.015, "percentile": 0.006, "mse": 0.0045}[method]
    return round(FP32_AP - loss + (0.004 if method == "minmax" and size > 32 else 0.0) + size * 1e-6, 6)


def _axes(backend, precision):
    return {"model": "yolov8_synth", "backend": backend, "precision": precision, "batch": 1,
            "imgsz": 320, "device": "cpu", "nms": "none"}


def build_study(url: str, *, same_scales: bool = False) -> str:
    base = "yolov8_synth/{}/{}/b1/s320/cpu/nms-none"
    cells = [{"key": base.format("pytorch", "fp32"), **_axes("pytorch", "fp32"), "params": {}},
             {"key": base.format("onnxruntime", "fp32"), **_axes("onnxruntime", "fp32"), "params": {}}]
    for size in SIZES:
        for method in METHODS:
            cells.append({"key": base.format("onnxruntime", "int8") + f"/cal-{method}-{size}",
                          **_axes("onnxruntime", "int8"),
                          "params": {"calibration_variant": f"{method}-{size}",
                                     "calibration": {"method": method, "images": size}}})
    with Store(url) as store:
        run_id = store.create_run(name="int8-calibration-study", matrix_path=None, matrix_hash="0",
                                  matrix_yaml="", git_sha=None, detbench_version="0", environment={},
                                  cells=[{**c, "position": i} for i, c in enumerate(cells)])
        for cell in store.cells(run_id):
            if cell.precision == "fp32":
                ap = FP32_AP - (0.0003 if cell.backend == "pytorch" else 0.0)
                store.record_result(cell.id, status="ok", metrics={"AP": ap, "AP50": ap + 0.2},
                                    latency={"median_ms": 10.0})
                continue
            cal = cell.params["calibration"]
            if (cal["method"], cal["images"]) == ("entropy", 512):
                store.record_result(cell.id, status="failed", stage="build", error="timed out")
                continue
            ap = _ap(cal["method"], cal["images"])
            scales = "same" if same_scales and cal["method"] in ("minmax", "entropy") and cal["images"] == 32 \
                else f"{cal['method']}-{cal['images']}"
            store.record_result(cell.id, status="ok", metrics={"AP": ap, "AP50": ap + 0.2},
                                latency={"median_ms": 12.0},
                                provenance={"calibration_method": cal["method"],
                                            "calibration_images": cal["images"],
                                            "scales_sha256": scales})
        store.finish_run(run_id, "finished")
    return run_id


def _compare_page(url: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("DETBENCH_DB", url)
    at = AppTest.from_file(str(ROOT / "dashboard/app.py"), default_timeout=60)
    at.run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _study_chart(at) -> dict:
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    found = [s for s in specs if s["layout"]["title"]["text"].startswith("int8 AP vs calibration")]
    assert len(found) == 1, [s["layout"].get("title") for s in specs]
    return found[0]


def test_compare_page_charts_ap_vs_method_and_size(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    build_study(url)
    at = _compare_page(url, monkeypatch)
    assert "int8 calibration: AP vs method and calibration set size" in [s.value for s in at.subheader]
    spec = _study_chart(at)
    lines = {t["name"]: t for t in spec["data"]}
    assert set(lines) == set(METHODS)
    assert lines["minmax"]["x"] == list(SIZES)
    assert lines["minmax"]["y"] == pytest.approx([_ap("minmax", s) for s in SIZES])
    assert lines["entropy"]["x"] == [32, 128]  # the failed 512-image cell has no point
    assert spec["layout"]["xaxis"]["type"] == "log"
    baselines = [s for s in spec["layout"]["shapes"] if s.get("type") == "line"]
    assert {round(s["y0"], 4) for s in baselines} == {FP32_AP, round(FP32_AP - 0.0003, 4)}
    ap_table, dap_table = [df.value for df in at.dataframe if "method" in df.value.columns]
    assert list(ap_table["method"]) == list(METHODS)
    assert list(ap_table.columns) == ["method", "32 images", "128 images", "512 images"]
    row = ap_table.set_index("method").loc["mse"]
    assert row["128 images"] == pytest.approx(_ap("mse", 128), abs=1e-4)
    assert dap_table.set_index("method").loc["percentile", "32 images"] == pytest.approx(
        _ap("percentile", 32) - FP32_AP, abs=1e-4)
    text = "\n".join(str(e.value) for e in at.caption)
    assert "Not ok: yolov8_synth/onnxruntime/int8/b1/s320/cpu/nms-none/cal-entropy-512" in text
    assert not at.warning  # every method chose its own scales


def test_identical_scales_of_two_methods_are_flagged(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'same.db'}"
    build_study(url, same_scales=True)
    at = _compare_page(url, monkeypatch)
    warnings = [w.value for w in at.warning]
    assert any("32 images: entropy, minmax chose identical scales" in w for w in warnings), warnings


def test_no_study_section_without_a_calibration_sweep(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    with Store(url) as store:
        run_id = store.create_run(
            name="plain", matrix_path=None, matrix_hash="0", matrix_yaml="", git_sha=None,
            detbench_version="0", environment={},
            cells=[{"key": f"m/onnxruntime/{p}/b1", "position": i, **_axes("onnxruntime", p), "params": {}}
                   for i, p in enumerate(("fp32", "int8"))])
        for cell in store.cells(run_id):
            store.record_result(cell.id, status="ok", metrics={"AP": 0.5}, latency={"median_ms": 1.0},
                                provenance={"calibration_method": "minmax", "calibration_images": 32})
        store.finish_run(run_id, "finished")
    at = _compare_page(url, monkeypatch)
    assert "int8 calibration: AP vs method and calibration set size" not in [s.value for s in at.subheader]


def test_study_rows_tell_the_heatmap_rows_apart(tmp_path):
    from dashboard.analysis import cells_frame

    url = f"sqlite:///{tmp_path / 'rows.db'}"
    run_id = build_study(url)
    frame = cells_frame(Store(url, readonly=True).cells(run_id))
    assert frame["row"].is_unique
    assert "yolov8_synth · onnxruntime · int8 · cal mse-128" in set(frame["row"])
    assert "yolov8_synth · onnxruntime · fp32" in set(frame["row"])  # no point: no "cal" suffix
    assert not any("nan" in label for label in list(frame["row"]) + list(frame["series"]))
