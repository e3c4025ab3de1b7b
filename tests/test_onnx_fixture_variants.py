"""Bring-your-own-ONNX on the trained fixture: every convention and pre-processing variant.

The fixture (yolov8_synth) is exported in other people's conventions
(tests/onnx_models.py); one detbench run scores each through its declared
contract on a real COCO-format dataset whose category ids are neither 0-based
nor contiguous.  Where the contract undoes the variant exactly, the AP equals
the fixture's PyTorch AP (within 0.002); declaring the wrong colour order or
the wrong class order gives a lower AP, so the contract is really applied.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, has_module, run_cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (has_module("mmyolo") and has_module("onnxruntime")),
                                 reason="needs the mmyolo stack and onnxruntime (extras mmyolo, onnx)")]

FIXTURE = ROOT / "fixtures" / "yolov8_synth"
IMAGES = 40
#: the fixture's classes get these ids (sorted by id the order stays circle, square, triangle,
#: which is what the positional mapping of an mmyolo model needs)
CATEGORY_IDS = {"circle": 7, "square": 12, "triangle": 30}

# name -> (export options, declared onnx contract beyond `path`)
VARIANTS = {
    "v8_sniffed": ({}, {}),
    "v5_objectness": ({"output": "v5"}, {"classes": ["circle", "square", "triangle"]}),
    "nhwc_bgr_uint8": ({"layout": "NHWC", "color": "BGR", "uint8": True}, {"input": {"color": "BGR"}}),
    "stretch_xywh": ({"box_format": "xywh"}, {"input": {"resize": "stretch"},
                                              "output": {"box_format": "xywh"}}),
    "end2end": ({"output": "end2end"}, {}),
    "dets6_normalised": ({"output": "dets6", "normalized": True, "box_format": "cxcywh"},
                         {"output": {"normalized": True, "box_format": "cxcywh"}}),
    "dets7_batch_index": ({"output": "dets7"}, {"output": {"columns": ["batch", "box", "score", "class"]}}),
    "permuted_plus_unmapped_class": (
        {"class_order": [2, 0, 1], "extra_class": True},
        {"classes": ["triangle", "circle", "square", "hexagon"]}),
    # negative controls: the same graphs as above, declared wrongly
    "wrong_colour": ({}, {"input": {"color": "BGR"}}),
    "wrong_class_order": ({"class_order": [2, 0, 1]}, {"classes": ["circle", "square", "triangle"]}),
}
EQUIVALENT = [k for k in VARIANTS if not k.startswith("wrong")]


def _dataset(tmp: Path) -> tuple[Path, Path]:
    """The fixture's evaluation split as a plain COCO dataset with ids 7, 12, 30."""
    from harness.data.synth import generate

    src = tmp / "synth"
    ann = json.loads(generate(src, images=IMAGES, seed=2, size=320).read_text())
    old_to_new = {c["id"]: CATEGORY_IDS[c["name"]] for c in ann["categories"]}
    ann["categories"] = [{**c, "id": old_to_new[c["id"]]} for c in ann["categories"]]
    ann["annotations"] = [{**a, "category_id": old_to_new[a["category_id"]]} for a in ann["annotations"]]
    for im in ann["images"]:  # image ids that do not start at 1 either
        im["id"] += 1000
    for a in ann["annotations"]:
        a["image_id"] += 1000
    images = tmp / "coco" / "val_images"
    shutil.copytree(src / "images", images)
    path = tmp / "coco" / "instances_val.json"
    path.write_text(json.dumps(ann))
    return images, path


def _matrix(models: dict[str, Path], images: Path, ann: Path) -> str:
    import yaml

    entries = [{"name": "fixture_pytorch", "config": str(FIXTURE / "config.py"),
                "checkpoint": str(FIXTURE / "yolov8_synth.pth")}]
    for name, path in models.items():
        entries.append({"name": name, "onnx": {"path": str(path), **VARIANTS[name][1]}})
    doc = {"name": "onnx-variants", "models": entries, "backends": ["pytorch", "onnxruntime"],
           "precisions": ["fp32", "fp16", "int8"], "batch_sizes": [2], "image_sizes": [320],
           "exclude": [{"model": "fixture_pytorch", "backend": "onnxruntime"},
                       {"backend": "pytorch", "precision": "fp16"}, {"backend": "pytorch", "precision": "int8"}],
           "include": [],
           "dataset": {"images": str(images), "annotations": str(ann), "limit": 24},
           "calibration": {"images": 8, "method": "minmax"},
           "alignment": {"images": 8},
           "timing": {"warmup": 0, "iterations": 1, "e2e": False}}
    # fp16 and int8 for one variant only (the rest of the suite covers the precision paths)
    doc["exclude"] += [{"model": n, "precision": p} for n in models if n != "v8_sniffed"
                       for p in ("fp16", "int8")]
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from onnx_models import export_variant, fixture_model

    tmp = tmp_path_factory.mktemp("onnx_variants")
    model, cfg = fixture_model()
    models = {name: export_variant(tmp / "models" / f"{name}.onnx", model, cfg, **opts)
              for name, (opts, _) in VARIANTS.items()}
    images, ann = _dataset(tmp)
    (tmp / "m.yaml").write_text(_matrix(models, images, ann))
    plan = run_cli("plan", "m.yaml", cwd=tmp)
    r = run_cli("run", "m.yaml", "--cache-dir", tmp / "cache", cwd=tmp)
    from harness.store import Store

    store = Store(f"sqlite:///{tmp}/results.db", readonly=True)
    run_id = store.get_run("latest").id
    cells = {(c.model, c.backend, c.precision): c for c in store.cells(run_id)}
    return {"cells": cells, "plan": plan, "run": r, "store": store, "run_id": run_id, "tmp": tmp}


def _ok(run, key):
    cell = run["cells"][key]
    assert cell.status == "ok", (cell.key, cell.stage, cell.error, cell.log_tail)
    return cell


def test_plan_prints_what_was_inferred(run):
    plan = run["plan"]
    assert plan.returncode == 0, plan.stderr
    assert "onnx model v8_sniffed: v8_sniffed.onnx" in plan.stdout
    assert "output.raw_layout = v8 (graph shape ['batch', 7, 2100])" in plan.stdout
    assert "input.layout = NHWC (graph)" in plan.stdout and "input.dtype = uint8 (graph)" in plan.stdout
    assert "output.names.labels = det_classes (graph)" in plan.stdout


def test_pytorch_reference_on_noncontiguous_category_ids(run):
    ref = _ok(run, ("fixture_pytorch", "pytorch", "fp32"))
    assert ref.metrics["AP"] >= 0.5, ref.metrics
    per_class = run["store"].class_ap(ref.id)
    assert [c["class_name"] for c in per_class] == ["circle", "square", "triangle"]
    dets = json.loads(Path(ref.artifacts["detections"]).read_text())
    assert {d["category_id"] for d in dets} == set(CATEGORY_IDS.values())


EQUAL_AP = 0.002  # "the same AP" for transforms that are equivalent


@pytest.mark.parametrize("name", EQUIVALENT)
def test_equivalent_contract_gives_the_pytorch_ap(run, name):
    ref = _ok(run, ("fixture_pytorch", "pytorch", "fp32")).metrics["AP"]
    cell = _ok(run, (name, "onnxruntime", "fp32"))
    assert abs(cell.metrics["AP"] - ref) <= EQUAL_AP, (name, cell.metrics["AP"], ref)
    assert cell.provenance["model_source"] == "onnx"
    assert cell.provenance["onnx_sha256"] and cell.provenance["config_hash"] == cell.provenance["onnx_sha256"]


@pytest.mark.parametrize("name", ["wrong_colour", "wrong_class_order"])
def test_a_wrong_declaration_gives_a_lower_ap(run, name):
    ref = _ok(run, ("fixture_pytorch", "pytorch", "fp32")).metrics["AP"]
    cell = _ok(run, (name, "onnxruntime", "fp32"))
    # outside the tolerance that "equal" uses above, by more than twice it: the contract was applied
    # (on the seed-2 synthetic split the colour swap costs 0.0067 AP, the class order 0.5)
    assert cell.metrics["AP"] < ref - 2 * EQUAL_AP, (name, cell.metrics["AP"], ref)


def test_unmapped_class_is_reported_not_silently_dropped(run):
    cell = _ok(run, ("permuted_plus_unmapped_class", "onnxruntime", "fp32"))
    assert cell.provenance["unmapped_classes"] == ["hexagon"]
    assert any("hexagon" in w and "not scored" in w for w in cell.warnings), cell.warnings
    assert cell.metrics["dropped_labels"] > 0


def test_fp16_and_int8_of_an_onnx_model(run):
    ref = _ok(run, ("fixture_pytorch", "pytorch", "fp32")).metrics["AP"]
    fp16 = _ok(run, ("v8_sniffed", "onnxruntime", "fp16"))
    int8 = _ok(run, ("v8_sniffed", "onnxruntime", "int8"))
    assert abs(fp16.metrics["AP"] - ref) <= 0.01, fp16.metrics["AP"]
    assert 0.5 * ref <= int8.metrics["AP"] <= ref + 0.02, int8.metrics["AP"]
    assert fp16.provenance["io_dtype"].startswith("float32")
    assert int8.provenance["calibration_cache_sha256"]


def test_pytorch_cells_of_onnx_models_are_skipped_with_a_reason(run):
    cell = run["cells"][("end2end", "pytorch", "fp32")]
    assert cell.status == "skipped" and "not pytorch" in cell.error


def test_alignment_uses_the_onnx_reference_cell(run):
    records = {r["cell"]: r for r in run["store"].alignments(run["run_id"]).values()}
    fp16 = next(r for k, r in records.items() if k.startswith("v8_sniffed/onnxruntime/fp16"))
    assert fp16["reference"].startswith("v8_sniffed/onnxruntime/fp32/"), fp16["reference"]
    assert fp16["tensor"].get("available", True), fp16["tensor"]  # yolo_raw keeps decoded tensors
    assert fp16["images_replayed"] > 0
    r = run_cli("compare", run["run_id"], "--json", "--db", f"sqlite:///{run['tmp']}/results.db")
    assert r.returncode == 0, r.stderr
    cells = {c["cell"]: c for c in json.loads(r.stdout)["cells"]}
    assert any(k.startswith("end2end/onnxruntime/fp32") for k in cells) is False  # a reference itself
