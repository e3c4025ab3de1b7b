"""Malformed matrices: each gives one clear error line and exit code 2, never a traceback."""
from __future__ import annotations

import pytest

from conftest import run_cli

GOOD_HEAD = "models: [{name: yolov8_n, checkpoint: random}]\nbackends: [pytorch]\n"
SYNTH = "dataset: {synth: {images: 2}}\n"

CASES = {
    "bad_yaml": ("models: [unclosed\n", "not valid YAML at line"),
    "not_mapping": ("- just\n- a list\n", "a matrix is a YAML mapping"),
    "unknown_key": (GOOD_HEAD + SYNTH + "bacthes: [1]\n", "unknown key 'bacthes'"),
    "unknown_model": ("models: [{name: yolov8_m, checkpoint: random}]\nbackends: [pytorch]\n" + SYNTH,
                      "unknown model 'yolov8_m'"),
    "unknown_backend": ("models: [{name: yolov8_n, checkpoint: random}]\nbackends: [tensorrrt]\n" + SYNTH,
                        "backends[0]: unknown backend 'tensorrrt' — did you mean 'tensorrt'?"),
    "unknown_precision": (GOOD_HEAD + SYNTH + "precisions: [fp32, int4]\n",
                          "precisions[1]: unknown precision 'int4'"),
    "negative_batch": (GOOD_HEAD + SYNTH + "batch_sizes: [-1]\n", "batch_sizes[0]: must be a positive integer"),
    "missing_dataset": (GOOD_HEAD, "dataset: required key missing"),
    "dataset_files_missing": (GOOD_HEAD + "dataset: {images: nowhere, annotations: none.json}\n",
                              "dataset.annotations: '"),
    "missing_checkpoint_key": ("models: [{name: yolov8_n}]\nbackends: [pytorch]\n" + SYNTH,
                               "models[0].checkpoint: required key missing"),
    "checkpoint_file_missing": ("models: [{name: yolov8_n, checkpoint: nope.pth}]\nbackends: [pytorch]\n" + SYNTH,
                                "checkpoint 'nope.pth'"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_matrix_is_one_clear_line(tmp_path, name):
    text, expected = CASES[name]
    (tmp_path / "m.yaml").write_text(text)
    r = run_cli("run", "m.yaml", "--db", f"sqlite:///{tmp_path}/r.db", cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert expected in lines[0].replace(str(tmp_path) + "/", "")


def test_missing_matrix_file(tmp_path):
    r = run_cli("plan", "absent.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "matrix file 'absent.yaml' does not exist" in r.stderr
