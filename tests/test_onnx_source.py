"""The onnx: model source: contract resolution, bad input, preprocessing geometry, adapters,
pre-quantized graphs, NaN outputs, the reference rule and the TensorRT build path.

Graphs here are tiny and made with onnx.helper (no torch), so these tests are fast; the
accuracy of every convention on the trained fixture is tests/test_onnx_fixture_variants.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import has_module, run_cli

pytestmark = pytest.mark.skipif(not (has_module("onnx") and has_module("onnxruntime")),
                                reason="needs onnx and onnxruntime (extra onnx)")
SIZE = 64


def tiny_raw(path: Path, *, nan=False, batch="N", classes=3, layout="NCHW", v5=False) -> Path:
    """A 1x1 conv 'detector' with a yolo_raw output: v8 [N, 4+C, A] or v5 [N, A, 5+C]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ch = (5 if v5 else 4) + classes
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, size=(ch, 3, 1, 1)).astype(np.float32)
    if nan:
        w[0, 0, 0, 0] = np.nan
    shape_in = [batch, 3, SIZE, SIZE] if layout == "NCHW" else [batch, SIZE, SIZE, 3]
    nodes, x = [], "images"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["images"], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes += [helper.make_node("Conv", [x, "w"], ["conv"]),
              helper.make_node("Sigmoid", ["conv"], ["sig"]),
              helper.make_node("Mul", ["sig", "k"], ["scaled"]),
              helper.make_node("Reshape", ["scaled", "shape"], ["raw" if not v5 else "raw_t"])]
    if v5:
        nodes.append(helper.make_node("Transpose", ["raw_t"], ["raw"], perm=[0, 2, 1]))
    k = np.ones((1, ch, 1, 1), np.float32)
    k[0, :4] = SIZE  # box values in pixels
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT,
                                       [batch, SIZE * SIZE, ch] if v5 else [batch, ch, SIZE * SIZE])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(k, "k"),
         numpy_helper.from_array(np.array([0, ch, -1], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def resolve(path, **contract):
    from harness.models.onnx_source import resolve as _resolve

    return _resolve({"path": str(path), **contract}, "models[0].onnx")


# ------------------------------------------------------------------ contract and bad input

def test_sniffs_a_v8_graph(tmp_path):
    c = resolve(tiny_raw(tmp_path / "m.onnx"))
    assert (c.convention, c.raw_layout, c.num_classes, c.layout, c.dtype) == ("yolo_raw", "v8", 3, "NCHW", "float32")
    assert (c.height, c.width, c.batch, c.box_format) == (SIZE, SIZE, None, "cxcywh")
    assert "input.layout = NCHW (graph)" in c.inferred


def test_sniffs_nhwc_and_fixed_batch(tmp_path):
    c = resolve(tiny_raw(tmp_path / "m.onnx", layout="NHWC", batch=1))
    assert (c.layout, c.batch) == ("NHWC", 1)


def test_v5_needs_classes_or_raw_layout(tmp_path):
    path = tiny_raw(tmp_path / "m.onnx", v5=True)
    from harness.errors import UserError

    with pytest.raises(UserError, match=r"models\[0\]\.onnx\.output\.raw_layout \(m\.onnx\): .*could be v5"):
        resolve(path)
    assert resolve(path, classes=["a", "b", "c"]).raw_layout == "v5"
    c = resolve(path, output={"raw_layout": "v5"})
    assert (c.raw_layout, c.num_classes) == ("v5", 3)


@pytest.mark.parametrize("contract, field, words", [
    ({"input": {"name": "image"}}, "input.name", "no input 'image' (inputs: images)"),
    ({"output": {"names": {"raw": "output0"}}}, "output.names.raw", "no output 'output0' (outputs: raw)"),
    ({"input": {"layout": "NHWC"}}, "input.layout", "channel dimension would be 64, not 3"),
    ({"classes": ["circle", "square"]}, "classes", "2 class names for a model with 3 classes"),
    ({"input": {"dtype": "uint8"}}, "input.dtype", "declared uint8 but input 'images' is float32"),
    ({"input": {"size": 320}}, "input.size", "declared 320x320 but input 'images' is 64x64"),
    ({"output": {"convention": "dets"}}, "output.convention", "dets is [N, K, 6|7] but output 'raw'"),
])
def test_contradictions_name_the_field_and_file(tmp_path, contract, field, words):
    from harness.errors import UserError

    path = tiny_raw(tmp_path / "m.onnx")
    with pytest.raises(UserError) as err:
        resolve(path, **contract)
    msg = str(err.value)
    assert msg.startswith(f"models[0].onnx.{field} (m.onnx): "), msg
    assert words in msg and "\n" not in msg


def _matrix(tmp_path, models: list[dict], **extra) -> Path:
    import yaml

    doc = {"name": "tiny", "models": models, "backends": ["onnxruntime"], "batch_sizes": [1],
           "image_sizes": [SIZE], "dataset": {"synth": {"images": 3, "seed": 2, "size": SIZE}},
           "calibration": {"images": 2, "seed": 3}, "alignment": {"images": 2},
           "timing": {"warmup": 0, "iterations": 1, "e2e": False},
           # a random 'detector' scores every prior: keep host NMS small
           "eval": {"score_thr": 0.5, "pre_topk": 200, "keep_topk": 50}, **extra}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("damage", ["truncated", "not_onnx", "missing"])
def test_unreadable_file_is_exit_2_at_plan_naming_file_and_field(tmp_path, damage):
    good = tiny_raw(tmp_path / "good.onnx").read_bytes()
    bad = tmp_path / "bad.onnx"
    if damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "not_onnx":
        bad.write_text("name: not a model\n")
    _matrix(tmp_path, [{"name": "mine", "onnx": {"path": "bad.onnx"}}])
    db = ("--db", f"sqlite:///{tmp_path}/r.db")
    for cmd in (("plan", "m.yaml"), ("run", "m.yaml", "--cache-dir", tmp_path / "cache", *db)):
        r = run_cli(*cmd, cwd=tmp_path)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "models[0].onnx.path" in lines[0] and "bad.onnx" in lines[0], r.stderr
    assert not (tmp_path / "r.db").exists()  # nothing written


def test_plan_prints_the_inferred_contract_and_fixed_batch_skips(tmp_path):
    tiny_raw(tmp_path / "m.onnx", batch=1)
    _matrix(tmp_path, [{"name": "mine", "onnx": {"path": "m.onnx", "input": {"color": "BGR"}}}],
            batch_sizes=[1, 2], backends=["pytorch", "onnxruntime"])
    r = run_cli("plan", "m.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "onnx model mine: m.onnx" in r.stdout and "batch = 1 (graph)" in r.stdout
    assert "BGR" in r.stdout
    r = run_cli("plan", "m.yaml", "--json", cwd=tmp_path)
    plan = json.loads(r.stdout)
    skip = {(c["backend"], c["batch"]): c["skip_reason"] for c in plan["cells"]}
    assert skip[("onnxruntime", 1)] is None
    assert "fixed batch of 1" in skip[("onnxruntime", 2)]
    assert "not pytorch" in skip[("pytorch", 1)]
    assert plan["onnx_models"]["mine"]["contract"]["color"] == "BGR"


def test_class_map_to_a_missing_category_is_exit_2(tmp_path):
    tiny_raw(tmp_path / "m.onnx")
    _matrix(tmp_path, [{"name": "mine", "onnx": {"path": "m.onnx", "classes": ["a", "b", "c"],
                                                 "class_map": {"a": "hexagon"}}}])
    r = run_cli("run", "m.yaml", "--cache-dir", tmp_path / "cache", "--db", f"sqlite:///{tmp_path}/r.db",
                cwd=tmp_path)
    assert r.returncode == 2 and "models[0].onnx.class_map.a" in r.stderr and "hexagon" in r.stderr, r.stderr


def test_onnx_model_refuses_config_and_checkpoint(tmp_path):
    from harness import matrix as mx
    from harness.errors import UserError

    with pytest.raises(UserError, match="takes no `config`/`checkpoint`"):
        mx.parse({"models": [{"name": "x", "checkpoint": "random", "onnx": {"path": "m.onnx"}}],
                  "backends": ["onnxruntime"], "dataset": {"synth": {}}})
    with pytest.raises(UserError, match="checkpoint"):
        mx.parse({"models": [{"name": "yolov8_n"}], "backends": ["onnxruntime"], "dataset": {"synth": {}}})


# ------------------------------------------------------------------ a real run of tiny graphs

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    tmp = tmp_path_factory.mktemp("tiny_run")
    tiny_raw(tmp / "ok.onnx")
    tiny_raw(tmp / "nan.onnx", nan=True)

    class Reader:
        def __init__(self):
            self.batches = iter([{"images": np.random.default_rng(i).random((1, 3, SIZE, SIZE), np.float32)}
                                 for i in range(2)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(tmp / "ok.onnx"), str(tmp / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    _matrix(tmp, [{"name": "ok", "onnx": {"path": "ok.onnx"}},
                  {"name": "qdq", "onnx": {"path": "qdq.onnx"}},
                  {"name": "nan", "onnx": {"path": "nan.onnx"}}],
            precisions=["fp32", "int8"], exclude=[{"model": "nan", "precision": "int8"}])
    r = run_cli("run", "m.yaml", "--cache-dir", tmp / "cache", "--db", f"sqlite:///{tmp}/r.db", cwd=tmp)
    from harness.store import Store

    store = Store(f"sqlite:///{tmp}/r.db", readonly=True)
    cells = {(c.model, c.precision): c for c in store.cells(store.get_run("latest").id)}
    return r, cells


@pytest.mark.slow  # five cell processes (~20 s each on a busy 2-core host)
def test_nan_outputs_fail_the_cell_at_load(tiny_run):
    r, cells = tiny_run
    assert r.returncode == 3, r.stderr  # a failed cell, the others ran
    cell = cells[("nan", "fp32")]
    assert (cell.status, cell.stage) == ("failed", "load")
    assert "nan.onnx" in cell.error and "output 'raw'" in cell.error and "NaN" in cell.error


@pytest.mark.slow  # five cell processes (~20 s each on a busy 2-core host)
def test_tiny_model_runs_fp32_and_int8(tiny_run):
    _, cells = tiny_run
    for key in (("ok", "fp32"), ("ok", "int8")):
        assert cells[key].status == "ok", (key, cells[key].error, cells[key].log_tail)
    assert cells[("ok", "int8")].provenance["calibration_cache_sha256"]


@pytest.mark.slow  # five cell processes (~20 s each on a busy 2-core host)
def test_a_graph_with_qdq_is_used_as_is(tiny_run):
    _, cells = tiny_run
    cell = cells[("qdq", "int8")]
    assert cell.status == "ok", (cell.error, cell.log_tail)
    assert cell.provenance["precision_source"] == "the graph's own Q/DQ nodes, used as is"
    assert "calibration_cache_sha256" not in cell.provenance
    assert cell.provenance["model_file"].endswith("qdq.onnx")


# ------------------------------------------------------------------ preprocessing and adapters

def _contract(**kw):
    base = dict(path="m.onnx", sha256="0", input_name="images", height=64, width=96, batch=None,
                resize="letterbox", pad_value=114.0, color="RGB", layout="NCHW", scale=1 / 255,
                mean=(0, 0, 0), std=(1, 1, 1), dtype="float32", convention="yolo_raw", outputs={},
                box_format="xyxy", normalized=False, columns=None, raw_layout="v8", num_classes=3,
                classes=None, class_map={}, has_qdq=False, reference={})
    from harness.models.onnx_source import Contract

    return Contract(**{**base, **kw})


@pytest.mark.parametrize("resize", ["letterbox", "stretch", "keep_ratio"])
def test_preprocessing_geometry_round_trips_a_box(resize):
    import torch

    from harness.export.host_nms import rescale_to_original
    from harness.models.onnx_preprocess import OnnxPreprocessor

    img = np.zeros((100, 300, 3), np.uint8)  # h 100, w 300 -> into 64 x 96
    img[20:60, 100:200] = (255, 0, 0)  # a blue (BGR) block
    c = _contract(resize=resize)
    prepared = OnnxPreprocessor(c, 96)([img], [7])
    x, meta = prepared.inputs.numpy()[0], prepared.metas[0]
    assert x.shape == (3, 64, 96) and x.dtype == np.float32
    ys, xs = np.nonzero(x[2] > 0.5)  # RGB: blue is the last channel
    box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    back = rescale_to_original(box, meta)[0].tolist()
    assert np.allclose(back, [100, 20, 200, 60], atol=3.5), (resize, back, meta)
    if resize == "letterbox":
        assert meta["pad_param"].tolist() == [16, 16, 0, 0]
    elif resize == "keep_ratio":
        assert meta["pad_param"].tolist() == [0, 32, 0, 0]
    else:
        assert meta["pad_param"].tolist() == [0, 0, 0, 0] and x[:, 60, 10].max() == 0


def test_preprocessing_nhwc_bgr_uint8():
    from harness.models.onnx_preprocess import OnnxPreprocessor

    img = np.zeros((64, 96, 3), np.uint8)
    img[..., 0] = 200  # blue in BGR
    x = OnnxPreprocessor(_contract(layout="NHWC", color="BGR", dtype="uint8"), 96)([img], [1]).inputs.numpy()
    assert x.shape == (1, 64, 96, 3) and x.dtype == np.uint8 and x[0, 0, 0].tolist() == [200, 0, 0]
    x = OnnxPreprocessor(_contract(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), 96)([img], [1]).inputs.numpy()
    assert np.allclose(x[0, :, 0, 0], [-1, -1, (200 / 255 - 0.5) / 0.5])  # RGB: blue last


def test_box_formats_and_normalisation():
    from harness.models.onnx_outputs import to_xyxy_pixels

    b = np.array([[0.5, 0.5, 0.25, 0.5]], np.float32)  # cx cy w h, normalised, input 64 x 96
    out = to_xyxy_pixels(b, _contract(box_format="cxcywh", normalized=True), 64, 96)
    assert np.allclose(out, [[36, 16, 60, 48]])
    out = to_xyxy_pixels(np.array([[10, 20, 5, 6]], np.float32), _contract(box_format="xywh"), 64, 96)
    assert np.allclose(out, [[10, 20, 15, 26]])


def test_dets_adapter_drops_padding_rows():
    from harness.models.onnx_outputs import dets

    meta = {"ori_shape": (64, 96), "scale_factor": (1.0, 1.0), "pad_param": np.zeros(4, np.float32)}
    arr = np.zeros((2, 4, 7), np.float32)
    arr[0, 0] = [0, 1, 2, 11, 12, 0.9, 2]
    arr[0, 1] = [-1, 1, 2, 11, 12, 0.8, 1]  # padding by batch index
    arr[1, 0] = [1, 5, 5, 9, 9, 0.7, 0]
    c = _contract(convention="dets", outputs={"dets": "d"}, columns=("batch", "box", "score", "class"))
    out = dets({"d": arr}, c, [meta, meta], {}, 64, 96)
    assert [len(d.scores) for d in out] == [1, 1]
    assert out[0].labels.tolist() == [2] and np.allclose(out[0].boxes, [[1, 2, 11, 12]])


def test_class_mapping_by_name_and_id():
    from harness.models.onnx_source import Categories, class_mapping

    cats = Categories(["circle", "square", "triangle"], [7, 12, 30])
    mapping, unmapped = class_mapping(_contract(classes=("Triangle", "hexagon", "circle", "box"),
                                                class_map={"box": 12}), cats)
    assert mapping == [2, 3, 0, 1] and unmapped == ["hexagon"]
    mapping, unmapped = class_mapping(_contract(classes=None, num_classes=4), cats)
    assert mapping == [0, 1, 2, 3] and unmapped == ["#3"]


def test_reference_rule_for_onnx_models():
    from harness.evaluate.alignment.pairing import reference_for

    def cell(i, backend, precision, device="cpu", batch=1, onnx=True, status="ok"):
        spec = {"onnx": {"path": "m.onnx", "reference": {"backend": "onnxruntime", "precision": "fp32",
                                                         "device": "cpu"}}} if onnx else {}
        return SimpleNamespace(id=i, key=f"{backend}/{precision}/{device}/b{batch}", model="m", imgsz=64,
                               backend=backend, precision=precision, device=device, batch=batch,
                               nms="none", position=i, status=status, params={"model_spec": spec})

    cells = [cell(1, "onnxruntime", "fp32", "cuda"), cell(2, "onnxruntime", "fp32", "cpu", batch=4),
             cell(3, "onnxruntime", "fp16", "cuda"), cell(4, "tensorrt", "fp32", "cuda")]
    assert reference_for(cells[2], cells)[0].id == 2  # cpu, although a cuda fp32 cell exists
    assert reference_for(cells[1], cells)[0].id == 2  # the reference is its own reference
    ref, why = reference_for(cells[3], cells[:1] + cells[2:])
    assert ref is None and "no onnxruntime fp32 cell on cpu" in why


# ------------------------------------------------------------------ TensorRT: same build path

@pytest.mark.skipif(not has_module("tensorrt_rtx_bindings"),
                    reason="tensorrt_rtx_bindings is not installed (extra tensorrt-rtx): the TensorRT "
                           "builder that runs without a GPU")
def test_tensorrt_builds_an_onnx_model_then_skips_without_gpu(tmp_path):
    tiny_raw(tmp_path / "m.onnx", layout="NHWC")
    _matrix(tmp_path, [{"name": "mine", "onnx": {"path": "m.onnx"}}], backends=["tensorrt"],
            devices=["cuda"], precisions=["fp32", "fp16"])
    r = run_cli("run", "m.yaml", "--cache-dir", tmp_path / "cache", "--db", f"sqlite:///{tmp_path}/r.db",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from harness.store import Store

    store = Store(f"sqlite:///{tmp_path}/r.db", readonly=True)
    for cell in store.cells(store.get_run("latest").id):
        assert cell.status == "skipped", (cell.key, cell.error, cell.log_tail)
        assert "engine built" in cell.error and "cannot execute here" in cell.error, cell.error
        assert cell.provenance["engine"]["engine_size"] > 0
        assert cell.provenance["engine"]["profile"] is not None
        assert cell.provenance["model_source"] == "onnx"


def test_readme_examples_are_valid_contracts():
    import re

    import yaml

    from harness.models.onnx_source import OnnxSource

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    full = yaml.safe_load(blocks[0])["models"][0]["onnx"]
    OnnxSource.model_validate(full)
    examples = [yaml.safe_load(b)["onnx"] for b in re.split(r"\n(?=\s*\n#)", blocks[1]) if "onnx:" in b]
    assert len(examples) == 4
    for ex in examples:
        OnnxSource.model_validate(ex)


def test_dets_or_single_class_v5_is_ambiguous(tmp_path):
    from harness.errors import UserError

    path = tiny_raw(tmp_path / "m.onnx", v5=True, classes=1)  # [N, 4096, 6]
    with pytest.raises(UserError, match=r"output\.convention \(m\.onnx\): .*could be dets"):
        resolve(path)
    c = resolve(path, output={"convention": "yolo_raw", "raw_layout": "v5"})
    assert (c.convention, c.num_classes) == ("yolo_raw", 1)


def test_reference_rule_is_validated_in_the_matrix():
    from harness import matrix as mx
    from harness.errors import UserError

    with pytest.raises(UserError, match=r"models\[0\]\.onnx\.reference\.backend: .*'onnxruntime' or 'tensorrt'"):
        mx.parse({"models": [{"name": "x", "onnx": {"path": "m.onnx", "reference": {"backend": "pytorch"}}}],
                  "backends": ["onnxruntime"], "dataset": {"synth": {}}})
