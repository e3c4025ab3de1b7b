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
