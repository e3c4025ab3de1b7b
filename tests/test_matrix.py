"""Pure expansion and validation of matrices: no torch, no files beyond the YAML."""
from __future__ import annotations

import pytest

from harness import matrix as mx
from harness.errors import UserError

BASE = {
    "models": [{"name": "yolov8_n", "checkpoint": "random"},
               {"name": "yolov5_s", "checkpoint": "random"}],
    "backends": ["pytorch"],
    "precisions": ["fp32", "fp16"],
    "batch_sizes": [1, 4],
    "image_sizes": [320],
    "devices": ["cpu", "cuda"],
    "dataset": {"synth": {"images": 4}},
}


def keys(cells):
    return [c["key"] for c in cells]


def test_product_then_exclude_lists_exactly_the_expected_cells():
    data = {**BASE, "exclude": [{"precision": "fp16", "device": "cpu"}, {"model": "yolov5_s", "batch": 4}]}
    cells = mx.expand(mx.parse(data))
    assert keys(cells) == [
        "yolov8_n/pytorch/fp32/b1/s320/cpu/nms-none",
        "yolov8_n/pytorch/fp32/b1/s320/cuda/nms-none",
        "yolov8_n/pytorch/fp32/b4/s320/cpu/nms-none",
        "yolov8_n/pytorch/fp32/b4/s320/cuda/nms-none",
        "yolov8_n/pytorch/fp16/b1/s320/cuda/nms-none",
        "yolov8_n/pytorch/fp16/b4/s320/cuda/nms-none",
        "yolov5_s/pytorch/fp32/b1/s320/cpu/nms-none",
        "yolov5_s/pytorch/fp32/b1/s320/cuda/nms-none",
        "yolov5_s/pytorch/fp16/b1/s320/cuda/nms-none",
    ]


def test_include_adds_back_an_excluded_cell_once():
    data = {**BASE, "exclude": [{"device": "cuda"}],
            "include": [{"model": "yolov8_n", "backend": "pytorch", "precision": "fp16", "batch": 4,
                         "imgsz": 320, "device": "cuda"},
                        {"model": "yolov8_n", "backend": "pytorch", "precision": "fp32", "batch": 1,
                         "imgsz": 320, "device": "cpu"}]}
    got = keys(mx.expand(mx.parse(data)))
    assert len(got) == 9  # 8 cpu cells + 1 included cuda cell; the cpu duplicate is not added
    assert got[-1] == "yolov8_n/pytorch/fp16/b4/s320/cuda/nms-none"
    assert len(set(got)) == len(got)


def test_overrides_patch_matching_cells_only():
    data = {**BASE, "overrides": [{"match": {"model": "yolov5_s"},
                                   "set": {"eval": {"score_thr": 0.25}, "timeout_s": 5}}]}
    cells = mx.expand(mx.parse(data))
    for c in cells:
        expected = 0.25 if c["model"] == "yolov5_s" else None
        assert c["eval"]["score_thr"] == expected
        assert c["timeout_s"] == (5 if c["model"] == "yolov5_s" else 900)


def test_unsupported_combination_is_a_skipped_cell_with_reason():
    data = {**BASE, "precisions": ["int8"], "devices": ["cpu"], "batch_sizes": [1]}
    cells = mx.expand(mx.parse(data))
    assert all("pytorch does not run int8" in c["skip_reason"] for c in cells)


def test_expansion_is_deterministic_and_hash_stable():
    a, b = mx.parse(BASE), mx.parse(dict(BASE))
    assert keys(mx.expand(a)) == keys(mx.expand(b))
    assert mx.matrix_hash(a) == mx.matrix_hash(b)
    assert mx.matrix_hash(a) != mx.matrix_hash(mx.parse({**BASE, "batch_sizes": [1]}))


@pytest.mark.parametrize("patch, expected", [
    ({"backends": ["pytorch", "tensorrrt"]}, "backends[1]: unknown backend 'tensorrrt' — did you mean"),
    ({"precisions": ["fp23"]}, "precisions[0]: unknown precision 'fp23' — did you mean 'fp32'?"),
    ({"timing": {"itertions": 3}}, "timing.itertions: unknown key 'itertions' — did you mean 'iterations'?"),
    ({"batch_sizes": [1, -4]}, "batch_sizes[1]: must be a positive integer, got -4"),
    ({"image_sizes": [300]}, "image_sizes[0]: 300 is not a multiple of 32"),
    ({"models": [{"name": "yolov9_x", "checkpoint": "random"}]}, "unknown model 'yolov9_x'"),
])
def test_errors_name_the_yaml_path_and_suggest_a_fix(patch, expected):
    with pytest.raises(UserError) as exc:
        mx.parse({**BASE, **patch})
    assert expected in str(exc.value)


def test_paths_are_relative_to_the_matrix_file(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "m.yaml"
    f.write_text("models: [{name: x, config: ../cfg.py, checkpoint: w.pth}]\nbackends: [pytorch]\n"
                 "dataset: {images: imgs, annotations: a.json}\n")
    m, _ = mx.load(f)
    assert m.models[0].config == str(tmp_path / "cfg.py")
    assert m.models[0].checkpoint == str(tmp_path / "sub" / "w.pth")
    assert m.dataset.images == str(tmp_path / "sub" / "imgs")


# ---------------------------------------------------------------- calibration study (#18)


def _study(calibration, precisions=("fp32", "int8", "int8-mixed"), overrides=()):
    return mx.parse({"models": [{"name": "yolov8_n", "checkpoint": "random"}],
                     "backends": ["onnxruntime"], "precisions": list(precisions),
                     "dataset": {"synth": {"images": 4}}, "calibration": calibration,
                     "overrides": list(overrides)})


def test_calibration_lists_expand_int8_cells_over_method_times_size():
    cells = mx.expand(_study({"method": ["minmax", "entropy"], "images": [32, 128]}))
    by_precision = {}
    for c in cells:
        by_precision.setdefault(c["precision"], []).append(c)
    assert len(by_precision["fp32"]) == 1 and by_precision["fp32"][0]["calibration_variant"] is None
    assert by_precision["fp32"][0]["key"].endswith("/nms-none")  # a non-int8 cell keeps its key
    for precision in ("int8", "int8-mixed"):
        got = [(c["calibration"]["method"], c["calibration"]["images"]) for c in by_precision[precision]]
        assert got == [("minmax", 32), ("entropy", 32), ("minmax", 128), ("entropy", 128)]
        assert [c["key"].rsplit("/", 1)[1] for c in by_precision[precision]] == [
            "cal-minmax-32", "cal-entropy-32", "cal-minmax-128", "cal-entropy-128"]
    assert len({c["key"] for c in cells}) == len(cells) == 9
    assert all(isinstance(c["calibration"]["method"], str) and isinstance(c["calibration"]["images"], int)
               for c in cells)  # every consumer sees one point


def test_a_single_calibration_point_keeps_the_plain_keys():
    plain = mx.expand(_study({"method": "entropy", "images": 64}))
    listed = mx.expand(_study({"method": ["entropy"], "images": [64]}))
    assert [c["key"] for c in plain] == [c["key"] for c in listed]
    assert all(c["calibration_variant"] is None for c in plain + listed)
    assert listed[1]["calibration"]["method"] == "entropy" and listed[1]["calibration"]["images"] == 64


def test_an_override_can_sweep_one_backend_only():
    m = _study({"images": 32}, precisions=("int8",),
               overrides=[{"match": {"backend": "onnxruntime"}, "set": {"calibration": {"method": ["minmax", "mse"]}}}])
    assert [c["key"].rsplit("/", 1)[1] for c in mx.expand(m)] == ["cal-minmax-32", "cal-mse-32"]


@pytest.mark.parametrize("calibration, message", [
    ({"method": []}, "calibration.method: an empty list sweeps nothing"),
    ({"method": ["mse", "mse"]}, "calibration.method: 'mse' is listed twice"),
    ({"method": ["minmax", "kl"]}, "calibration.method[1]: the text 'kl' is not allowed: use 'minmax', "
                                   "'entropy', 'percentile' or 'mse'"),
    ({"images": [32, 0]}, "calibration.images[1]: must be greater than 0, got 0"),
    ({"images": 0}, "calibration.images: must be greater than 0, got 0"),
])
def test_bad_calibration_sweeps_are_one_clear_line(calibration, message):
    with pytest.raises(UserError) as err:
        _study(calibration)
    assert str(err.value).startswith(f"<matrix>: {message}") and "\n" not in str(err.value)


def test_plan_names_each_calibration_point(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("models: [{name: yolov8_n, checkpoint: random}]\nbackends: [onnxruntime]\n"
                    "precisions: [fp32, int8]\ndataset: {synth: {images: 4}}\n"
                    "calibration: {method: [minmax, percentile], images: [32, 512]}\n")
    from conftest import run_cli

    r = run_cli("plan", path, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import json

    cells = json.loads(r.stdout)["cells"]
    assert [c["calibration_variant"] for c in cells] == [None, "minmax-32", "percentile-32",
                                                         "minmax-512", "percentile-512"]


def test_series_identity_tells_calibration_points_apart():
    from types import SimpleNamespace

    from harness.check.series import plan_id

    def cell(precision, **calibration):
        return SimpleNamespace(model="m", backend="onnxruntime", precision=precision, batch=1, imgsz=320,
                               nms="none", device="cpu", params={"calibration": calibration})

    default = plan_id(cell("int8", method="minmax", images=32))
    assert default == plan_id(SimpleNamespace(**{**vars(cell("int8")), "params": {}}))  # old stores
    assert len({default, plan_id(cell("int8", method="entropy", images=32)),
                plan_id(cell("int8", method="minmax", images=128))}) == 3
    assert plan_id(cell("fp32", method="entropy", images=128)) == plan_id(cell("fp32"))
