"""harness.trt: flavour detection, static graph checks, real builds with TensorRT-RTX, caches.

TensorRT-RTX's builder parses ONNX and builds engines on a machine without a
GPU, so these tests run in CI; each static check is paired with the real
parser/builder failure it predicts.  The calibrator (TensorRT 10 only) is tested
against a stand-in module.
"""
from __future__ import annotations

import io
import json
import types
import warnings

import numpy as np
import pytest
from conftest import has_module

HAS_RTX = has_module("tensorrt_rtx_bindings")
needs_rtx = pytest.mark.skipif(
    not HAS_RTX, reason="tensorrt_rtx_bindings is not installed (pip install -e '.[tensorrt-rtx]'); "
                        "TensorRT-RTX is the TensorRT builder that runs without a GPU")
needs_onnx = pytest.mark.skipif(not (has_module("onnx") and has_module("torch")),
                                reason="onnx and torch are needed to make test graphs")
PROFILE = (1, 2, 4)


@pytest.fixture(scope="module")
def rtx():
    from harness.trt import detect

    flavour = detect(prefer="tensorrt_rtx")
    assert flavour is not None and flavour.name == "tensorrt_rtx"
    return flavour


# --------------------------------------------------------------------------- graphs

@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """Tiny ONNX graphs: conv net fp32 / fp16 / Q/DQ int8, TopK, EfficientNMS_TRT, NMS."""
    out = tmp_path_factory.mktemp("graphs")
    paths = {"fp32": out / "conv.onnx", "fp16": out / "conv_fp16.onnx"}
    _export_conv(paths["fp32"], half=False)
    _export_conv(paths["fp16"], half=True)
    paths["int8"] = out / "conv_int8.onnx"
    _quantize(paths["fp32"], paths["int8"])
    for name, model in {"topk5000": _topk_model(5000), "topk3840": _topk_model(3840),
                        "topk_const_chain": _topk_model(5000, via_constant=True),
                        "efficient_nms": _efficient_nms_model(), "nms": _nms_model()}.items():
        paths[name] = out / f"{name}.onnx"
        paths[name].write_bytes(model.SerializeToString())
    return paths


def _export_conv(path, half: bool):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c2(torch.relu(self.c1(x)))

    class Half(torch.nn.Module):  # fp16 inside, fp32 I/O: what AutoCast(keep_io_types) makes
        def __init__(self, net):
            super().__init__()
            self.net = net.half()

        def forward(self, x):
            return self.net(x.half()).float()

    torch.manual_seed(0)
    model = Half(Net()) if half else Net()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, 32, 32),), buf, dynamo=False,
                          opset_version=17, input_names=["images"], output_names=["out"],
                          dynamic_axes={"images": {0: "batch"}, "out": {0: "batch"}})
    path.write_bytes(buf.getvalue())


def _quantize(src, dst):
    """Q/DQ int8 the way TensorRT wants it (symmetric, per-channel, no bias quantization)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"images": rng.random((1, 3, 32, 32), dtype=np.float32)}
                            for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["Conv"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": False,
                                   "OpTypesToExcludeOutputQuantization": ["Conv"]})


def _model(nodes, inputs, outputs, inits=(), extra_opsets=()):
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *extra_opsets])


def _topk_model(k: int, via_constant: bool = False):
    """images (N, 6000) -> TopK(K) along axis 1; K an initializer or Constant -> Cast -> Reshape."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 6000])
    outs = [helper.make_tensor_value_info("values", TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["N", k])]
    if not via_constant:
        k_init = numpy_helper.from_array(np.array([k], dtype=np.int64), "k")
        return _model([helper.make_node("TopK", ["images", "k"], ["values", "indices"], axis=1)],
                      [x], outs, [k_init])
    nodes = [helper.make_node("Constant", [], ["k0"], value=numpy_helper.from_array(
                 np.array(k, dtype=np.int32))),
             helper.make_node("Cast", ["k0"], ["k1"], to=TensorProto.INT64),
             helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(
                 np.array([1], dtype=np.int64))),
             helper.make_node("Reshape", ["k1", "one"], ["k"]),
             helper.make_node("TopK", ["images", "k"], ["values", "indices"], axis=1)]
    return _model(nodes, [x], outs)


def _efficient_nms_model():
    """The node detbench's export writes for nms='efficient_nms' (domain 'trt')."""
    from onnx import TensorProto, helper, numpy_helper

    boxes = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 100, 4])
    scores = numpy_helper.from_array(np.random.default_rng(0).random((1, 100, 3), np.float32),
                                     "scores")
    node = helper.make_node("EfficientNMS_TRT", ["images", "scores"], ["num", "db", "ds", "dc"],
                            domain="trt", background_class=-1, box_coding=0, iou_threshold=0.65,
                            max_output_boxes=10, plugin_version="1", score_activation=0,
                            score_threshold=0.25)
    outs = [helper.make_tensor_value_info("num", TensorProto.INT32, [1, 1]),
            helper.make_tensor_value_info("db", TensorProto.FLOAT, [1, 10, 4]),
            helper.make_tensor_value_info("ds", TensorProto.FLOAT, [1, 10]),
            helper.make_tensor_value_info("dc", TensorProto.INT32, [1, 10])]
    return _model([node], [boxes], outs, [scores], [helper.make_opsetid("trt", 1)])


def _nms_model():
    from onnx import TensorProto, helper, numpy_helper

    boxes = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 100, 4])
    inits = [numpy_helper.from_array(np.random.default_rng(0).random((1, 3, 100), np.float32),
                                     "scores"),
             numpy_helper.from_array(np.array([10], np.int64), "max_out"),
             numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
             numpy_helper.from_array(np.array([0.1], np.float32), "score_thr")]
    node = helper.make_node("NonMaxSuppression", ["images", "scores", "max_out", "iou", "score_thr"],
                            ["selected"])
    return _model([node], [boxes], [helper.make_tensor_value_info("selected", TensorProto.INT64,
                                                                  ["K", 3])], inits)


def _codes(problems):
    return [p.code for p in problems]


# --------------------------------------------------------------------------- import, detection

def test_import_is_lazy_and_planning_helpers_need_no_tensorrt():
    from test_import_light import run_blocked

    r = run_blocked("import harness.trt as t\n"
                    "from harness.trt import flavour, capability, build, cache, calibrator\n"
                    "print(t.clamp_pre_topk(30000, None)[0], t.engine_cache_key('h', 'fp16', (1, 2, 4), "
                    "'tensorrt', '10.8', 'gpu', (8, 9))[:4])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3840", "fp16"]


@needs_rtx
def test_detect_finds_rtx_strongly_typed(rtx):
    assert rtx.strongly_typed_only and not rtx.has_calibrators
    assert rtx.version.startswith("1.") and rtx.label.startswith("TensorRT-RTX ")
    assert rtx.topk_max == 3840 and rtx.topk_max_source.startswith("probe:")
    assert "EfficientNMS_TRT" not in rtx.plugins and "BatchedNMSDynamic_TRT" not in rtx.plugins
    from harness.trt import why_unavailable

    assert why_unavailable() == ""


# --------------------------------------------------------------------------- builds

@needs_rtx
@needs_onnx
def test_fp32_build_honours_profile(rtx, graphs):
    from harness.trt import BuildError, build_engine, check_graph

    assert check_graph(graphs["fp32"], rtx, "fp32") == []
    r = build_engine(graphs["fp32"], flavour=rtx, precision="fp32", profile=PROFILE)
    assert r.engine_bytes and r.engine_size == len(r.engine_bytes) > 0
    assert r.typing == "strong" and r.flags == () and r.profile == PROFILE
    assert r.profile_shapes == {"images": ((1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))}
    assert set(r.layer_precisions.values()) == {"fp32"}
    assert "precision=fp32 typing=strong" in r.log and r.build_time_s > 0
    with pytest.raises(BuildError, match="dynamic batch") as err:
        build_engine(graphs["fp32"], flavour=rtx, profile=None)
    assert err.value.stage == "profile"


@needs_rtx
@needs_onnx
def test_fp16_graph_builds_strongly_typed(rtx, graphs):
    from harness.trt import BuildError, build_engine, check_graph

    assert _codes(check_graph(graphs["fp32"], rtx, "fp16")) == ["fp16_needs_fp16_graph"]
    with pytest.raises(BuildError, match="no float16 tensors"):
        build_engine(graphs["fp32"], flavour=rtx, precision="fp16", profile=PROFILE)
    assert check_graph(graphs["fp16"], rtx, "fp16") == []
    assert _codes(check_graph(graphs["fp16"], rtx, "fp32")) == ["fp32_graph_not_fp32"]
    r = build_engine(graphs["fp16"], flavour=rtx, precision="fp16", profile=PROFILE)
    assert r.engine_size > 0 and r.typing == "strong" and r.flags == ()
    assert "fp16" in r.layer_precisions.values()


@needs_rtx
@needs_onnx
def test_qdq_int8_graph_builds(rtx, graphs):
    from harness.trt import build_engine, check_graph

    assert _codes(check_graph(graphs["fp32"], rtx, "int8")) == ["int8_needs_qdq"]
    assert check_graph(graphs["int8"], rtx, "int8") == []
    r = build_engine(graphs["int8"], flavour=rtx, precision="int8", profile=PROFILE)
    assert r.engine_size > 0 and r.typing == "strong"
    assert "int8" in r.layer_precisions.values()


@needs_rtx
@needs_onnx
def test_topk_limit_check_matches_the_builder(rtx, graphs):
    from harness.trt import BuildError, build_engine, check_graph

    for name in ("topk5000", "topk_const_chain"):
        problems = check_graph(graphs[name], rtx, "fp32")
        assert _codes(problems) == ["topk_k_exceeds_limit"], name
        assert "K=5000" in problems[0].message and "pre_topk <= 3840" in problems[0].fix
    with pytest.raises(BuildError) as checked:
        build_engine(graphs["topk5000"], flavour=rtx, profile=PROFILE)
    assert checked.value.stage == "check"
    with pytest.raises(BuildError) as built:  # the real builder agrees
        build_engine(graphs["topk5000"], flavour=rtx, profile=PROFILE, check=False)
    assert built.value.stage == "build"
    assert "K exceeds the maximum value allowed (3840)" in built.value.message
    assert check_graph(graphs["topk3840"], rtx, "fp32") == []
    assert build_engine(graphs["topk3840"], flavour=rtx, profile=PROFILE).engine_size > 0


@needs_rtx
@needs_onnx
def test_missing_plugin_and_nms_are_reported_before_the_parser_and_builder(rtx, graphs):
    from harness.trt import BuildError, build_engine, check_graph

    problems = check_graph(graphs["efficient_nms"], rtx, "fp32")
    assert _codes(problems) == ["plugin_missing"]
    assert "EfficientNMS_TRT" in problems[0].message and "nms='none'" in problems[0].fix
    with pytest.raises(BuildError) as parsed:
        build_engine(graphs["efficient_nms"], flavour=rtx, check=False)
    assert parsed.value.stage == "parse" and "Plugin not found" in parsed.value.message

    assert _codes(check_graph(graphs["nms"], rtx, "fp32")) == ["op_unsupported"]
    with pytest.raises(BuildError) as built:
        build_engine(graphs["nms"], flavour=rtx, check=False)
    assert built.value.stage == "build" and "no runners" in built.value.message


@needs_rtx
@needs_onnx
def test_timing_cache_is_written_and_reused(rtx, graphs, tmp_path):
    from harness.trt import build_engine

    cache = tmp_path / "timing.cache"
    first = build_engine(graphs["fp32"], flavour=rtx, profile=PROFILE, timing_cache_path=cache)
    assert first.timing_cache == "created" and cache.stat().st_size > 0
    second = build_engine(graphs["fp32"], flavour=rtx, profile=PROFILE, timing_cache_path=cache)
    assert second.timing_cache == "loaded"
    assert any("no-op on TensorRT-RTX" in w for w in second.warnings)


def test_typing_plan_for_tensorrt_10_11_and_rtx():
    """TensorRT 10 keeps weak typing for plain fp32 graphs; 11 and RTX take precision from the graph."""
    from harness.trt.build import BuildError, plan_typing
    from harness.trt.capability import GraphFeatures

    def flavour(strong_only, calib):
        return types.SimpleNamespace(strongly_typed_only=strong_only, has_calibrators=calib,
                                     label="TensorRT x")

    trt10, trt11 = flavour(False, True), flavour(True, False)
    plain = GraphFeatures(False, 0, (), (), frozenset({"Conv"}))
    fp16 = GraphFeatures(True, 0, (), (), frozenset({"Conv", "Cast"}))
    qdq = GraphFeatures(False, 4, (), (), frozenset({"Conv", "QuantizeLinear"}))
    cal = object()
    assert plan_typing(trt10, plain, "fp32") == (True, (), False, [])
    assert plan_typing(trt10, plain, "fp16") == (False, ("FP16",), False, [])
    assert plan_typing(trt10, plain, "int8", cal) == (False, ("INT8",), True, [])
    assert plan_typing(trt10, fp16, "fp16")[:2] == (True, ())
    strong, flags, use_cal, notes = plan_typing(trt10, qdq, "int8", cal)
    assert (strong, flags, use_cal) == (True, (), False) and "calibrator ignored" in notes[0]
    with pytest.raises(BuildError, match="needs a calibrator"):
        plan_typing(trt10, plain, "int8")
    assert plan_typing(trt11, qdq, "int8") == (True, (), False, [])
    assert plan_typing(trt11, plain, "fp16")[:2] == (True, ())  # check_graph refuses this one
    with pytest.raises(BuildError, match="no INT8 calibrators"):
        plan_typing(trt11, qdq, "int8", cal)


# --------------------------------------------------------------------------- engine cache

def test_engine_cache_key_changes_with_every_input():
    from harness.trt import engine_cache_key

    base = dict(onnx_hash="a" * 64, precision="fp16", profile=(1, 8, 16), flavour="tensorrt",
                flavour_version="10.8.0.43", gpu_name="NVIDIA H100", compute_capability=(9, 0),
                calib_cache_hash=None)
    changed = dict(onnx_hash="b" * 64, precision="int8", profile=(1, 8, 32), flavour="tensorrt_rtx",
                   flavour_version="10.9.0.34", gpu_name="NVIDIA L4", compute_capability="8.9",
                   calib_cache_hash="c" * 64)
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base) and key.startswith("fp16_b1-8-16_tensorrt-10.8.0.43_sm90_")
    for field, value in changed.items():
        assert engine_cache_key(**{**base, field: value}) != key, field
    assert engine_cache_key(**base, extra={"workspace_gb": 4}) != key


@needs_rtx
@needs_onnx
def test_cached_engine_builds_once_and_writes_metadata(rtx, graphs, tmp_path):
    import functools

    from harness.trt import build_engine, cached_engine, engine_cache_key, engine_meta, file_sha256

    calls = []

    def build():
        calls.append(1)
        return functools.partial(build_engine, graphs["fp32"], flavour=rtx, profile=PROFILE)()

    key = engine_cache_key(file_sha256(graphs["fp32"]), "fp32", PROFILE, rtx.name, rtx.version,
                           "cpu", "0.0")
    path = cached_engine(tmp_path, key, build)
    assert cached_engine(tmp_path, key, build) == path and len(calls) == 1
    meta = engine_meta(path)
    assert meta["engine_size"] == path.stat().st_size > 0 and meta["build_time_s"] > 0
    assert "precision=fp32" in open(meta["log_path"]).read()
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / f"{key}.json").write_text(json.dumps({**meta, "engine_size": 1}))  # torn entry
    cached_engine(tmp_path, key, build)
    assert len(calls) == 2


# --------------------------------------------------------------------------- pre_topk, calibrator

def test_clamp_pre_topk():
    from harness.errors import UserError
    from harness.trt import clamp_pre_topk

    flavour = types.SimpleNamespace(topk_max=3840, label="TensorRT 10.8.0.43")
    assert clamp_pre_topk(1000, flavour) == (1000, None)
    value, warning = clamp_pre_topk(30000, flavour)
    assert value == 3840 and "clamped to 3840" in warning
    with pytest.raises(UserError, match=r"pre_topk 30000 exceeds TensorRT's TopK limit 3840 .*"
                                        r"set eval.pre_topk <= 3840 or policy clamp"):
        clamp_pre_topk(30000, flavour, policy="refuse")
    assert clamp_pre_topk(5000, None)[0] == 3840


def _fake_trt():
    class Base:
        def __init__(self):
            self.base_initialised = True

    return types.SimpleNamespace(__name__="tensorrt", __version__="10.8.0.43",
                                 IInt8EntropyCalibrator2=type("IInt8EntropyCalibrator2", (Base,), {}),
                                 IInt8MinMaxCalibrator=type("IInt8MinMaxCalibrator", (Base,), {}))


def test_calibrator_batches_and_cache_with_a_stand_in_tensorrt(tmp_path):
    pytest.importorskip("torch")
    from harness.errors import UserError
    from harness.trt import make_calibrator

    trt = _fake_trt()
    cache = tmp_path / "calib.cache"
    batches = [np.ones((2, 3, 8, 8), np.float32) * i for i in range(3)] + [np.zeros((1, 3, 8, 8))]
    cal = make_calibrator(trt, "entropy", iter(batches), cache, device="cpu")
    assert isinstance(cal, trt.IInt8EntropyCalibrator2) and cal.base_initialised
    assert cal.read_calibration_cache() is None
    assert cal.get_batch_size() == 2 and cal.batch_shape == (2, 3, 8, 8)
    pointers = [cal.get_batch(["images"]) for _ in range(3)]
    assert all(isinstance(p, list) and len(p) == 1 and p[0] > 0 for p in pointers)
    assert cal.get_batch(["images"]) is None  # the short last batch is dropped
    assert cal.num_batches == 3 and cal.dropped == 1 and cal.error is None
    cal.write_calibration_cache(memoryview(b"TRT-1008-EntropyCalibration2\nimages: 3c010a14\n"))
    assert cache.read_bytes().startswith(b"TRT-1008") and not list(tmp_path.glob("*.tmp"))

    consumed = []

    def lazy():
        for b in batches:
            consumed.append(1)
            yield b

    again = make_calibrator(trt, "minmax", lazy(), cache, device="cpu")
    assert isinstance(again, trt.IInt8MinMaxCalibrator)
    assert again.read_calibration_cache() == cache.read_bytes() and again.cache_read
    assert consumed == []  # a cache hit reads no calibration data
    assert again.get_batch(["scores"]) is None and isinstance(again.error, UserError)
    cache.write_bytes(b"")
    assert make_calibrator(trt, "entropy", [], cache).read_calibration_cache() is None

    with pytest.raises(UserError, match="no IInt8EntropyCalibrator2"):
        make_calibrator(types.SimpleNamespace(__name__="tensorrt", __version__="11.0"), "entropy",
                        [], None)
    with pytest.raises(UserError, match="unknown calibration method"):
        make_calibrator(trt, "percentile", [], None)


# --------------------------------------------------------------------------- issue #11

def _topk_module(checks_width: bool, hard_limit: int = 3840):
    """A stand-in TensorRT whose add_topk refuses k above ``hard_limit`` and, when
    ``checks_width``, above a static reduced axis (as a TensorRT checking k <= d would)."""
    class Network:
        def add_input(self, name, dtype, shape):
            return types.SimpleNamespace(shape=tuple(shape))

        def add_topk(self, x, op, k, axes):
            width = x.shape[-1]
            if k > hard_limit or (checks_width and width != -1 and k > width):
                return None
            return object()

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

    class ILogger:
        def __init__(self):
            pass

    return types.SimpleNamespace(__name__="fake_tensorrt", Builder=Builder, ILogger=ILogger,
                                 float32="float32", TopKOperation=types.SimpleNamespace(MAX=0),
                                 NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0))


def test_topk_probe_is_not_limited_by_the_probe_axis():
    """Item 12: a TensorRT that checks k <= d at layer creation must still report 3840."""
    from harness.trt.flavour import probe_topk_max

    value, source = probe_topk_max(_topk_module(checks_width=True))
    assert value == 3840 and "dynamic axis" in source
    value, source = probe_topk_max(_topk_module(checks_width=False, hard_limit=8))
    assert value == 3840 and "sanity floor" in source  # 8 is not believed


@needs_rtx
def test_rtx_topk_probe_runs_on_a_dynamic_axis(rtx):
    assert rtx.topk_max == 3840 and "dynamic axis" in rtx.topk_max_source


@needs_rtx
@needs_onnx
def test_fp32_engine_is_built_without_tf32(rtx, graphs):
    """Item 10: TensorRT enables TF32 by default; an fp32 cell clears it and says so."""
    from harness.trt import build_engine

    r = build_engine(graphs["fp32"], flavour=rtx, precision="fp32", profile=PROFILE)
    assert r.tf32 is False and any("TF32 cleared" in w for w in r.warnings)
    r16 = build_engine(graphs["fp16"], flavour=rtx, precision="fp16", profile=PROFILE)
    assert r16.tf32 is True


@needs_rtx
@needs_onnx
def test_runner_engine_profile_covers_the_short_last_chunk_and_caches_are_keyed(rtx, graphs,
                                                                                 tmp_path):
    """Items 1, 10, 13 on a real RTX build: batch 8 with batch_sizes [8] builds a profile
    from batch 1 (the accuracy pass's last chunk), fp32 without TF32, and a timing cache
    named by TensorRT version and GPU."""
    from harness.backends.tensorrt import TensorRTRunner
    from harness.trt import engine_meta

    cell = {"precision": "fp32", "batch": 8, "batch_axis": [8], "device": "cuda", "nms": "none"}
    runner = TensorRTRunner(cell, types.SimpleNamespace(cache_dir=tmp_path))
    runner.flavour = rtx
    engine = runner._engine(graphs["fp32"], None)
    meta = engine_meta(engine)
    assert meta["profile"] == [1, 8, 8] and meta["tf32"] is False
    assert runner.info.facts["engine"]["tf32"] is False
    (timing,) = (tmp_path / "engines").glob("timing-*.cache")
    assert timing.name.startswith(f"timing-tensorrt_rtx-{rtx.version}-sm00-")  # no GPU here
    assert timing.stat().st_size > 0


def test_calibration_and_timing_cache_names_change_with_every_input():
    """Items 5 and 13."""
    from harness.trt import calibration_cache_name, timing_cache_name

    base = dict(onnx_hash="a" * 64, flavour="tensorrt", flavour_version="10.13.0.35",
                method="entropy", data_hash="d" * 64, gpu_name="NVIDIA H100", compute_capability="9.0")
    changed = dict(onnx_hash="b" * 64, flavour="tensorrt_rtx", flavour_version="10.12.0.36",
                   method="minmax", data_hash="e" * 64, gpu_name="NVIDIA L4", compute_capability="8.9")
    name = calibration_cache_name(**base)
    assert name == calibration_cache_name(**base) and name.startswith("trt-10.13.0.35-entropy-")
    for field, value in changed.items():
        assert calibration_cache_name(**{**base, field: value}) != name, field
    t = dict(flavour="tensorrt", flavour_version="10.13.0.35", gpu_name="NVIDIA H100",
             compute_capability=(9, 0))
    tname = timing_cache_name(**t)
    assert tname.startswith("timing-tensorrt-10.13.0.35-sm90-")
    for field, value in dict(flavour_version="11.1.0.8", gpu_name="NVIDIA H200",
                             compute_capability="8.9").items():
        assert timing_cache_name(**{**t, field: value}) != tname, field


def test_nms_candidate_caps_per_variant():
    """Item 6 and 13: what each in-graph NMS really considers per image."""
    from harness.trt import nms_candidate_cap
    from harness.trt.capability import nms_cap_warning

    onnx_cap = nms_candidate_cap("onnx", 3840, 8400, 80)
    assert onnx_cap["cap"] == 5000 and onnx_cap["pairs_in"] == 3840 * 80 and onnx_cap["binding"]
    assert "INMSLayer" in onnx_cap["source"] and "considers at most 5000" in nms_cap_warning(onnx_cap)
    eff = nms_candidate_cap("efficient_nms", 1000, 8400, 80)
    assert eff["boxes_in"] == 1000 and eff["cap"] == 5000 and eff["binding"]
    assert not nms_candidate_cap("efficient_nms", 50, 8400, 80)["binding"]  # 4000 pairs fit
    batched = nms_candidate_cap("batched_nms", None, 8400, 80)
    assert batched["boxes_in"] == 4096 and batched["binding"]
    assert "at most 4096 boxes" in nms_cap_warning(batched)
    assert not nms_candidate_cap("batched_nms", 3840, 8400, 80)["binding"]
    assert nms_candidate_cap("none", None, 8400, 80) == {}


@needs_onnx
def test_plugin_nodes_get_pre_topk_and_batched_nms_mmcv_iou(tmp_path):
    """Items 3, 6 and 13 in the exported graph: BatchedNMS writes caffeSemantics=0 (its
    default true adds 1 pixel to width and height in the IoU, unlike mmcv) and both plugins
    get the pre-top-k boxes (BatchedNMS at most 4096), not all 8400 anchors."""
    import onnx
    import torch

    from harness.export.deploy import _NMS_STAGES, TRT_PLUGIN_DOMAIN
    from harness.trt.capability import graph_features

    class Stage(torch.nn.Module):
        def __init__(self, kind, pre_topk):
            super().__init__()
            self.kind = kind
            self.deploy = types.SimpleNamespace(pre_topk=pre_topk, keep_topk=100, iou_thr=0.65,
                                                score_thr=0.001)

        def forward(self, boxes, scores):
            return _NMS_STAGES[self.kind](self.deploy, boxes, scores)

    for kind, op in (("efficient_nms", "EfficientNMS_TRT"), ("batched_nms", "BatchedNMSDynamic_TRT")):
        for pre_topk, expected in ((1000, 1000), (30000, 8400 if kind == "efficient_nms" else 4096)):
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(Stage(kind, pre_topk), (torch.rand(2, 8400, 4), torch.rand(2, 8400, 3)),
                                  buf, dynamo=False, opset_version=17, custom_opsets={TRT_PLUGIN_DOMAIN: 1})
            proto = onnx.load_from_string(buf.getvalue())
            assert [k for _, k in graph_features(proto).topk] == [expected], (kind, pre_topk)
            (node,) = [n for n in proto.graph.node if n.op_type == op]
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if kind == "batched_nms":
                assert attrs["caffeSemantics"] == 0 and attrs["isNormalized"] == 0
                assert attrs["topK"] == expected


@needs_rtx
def test_nms_plugin_messages_name_the_tensorrt_that_has_them(rtx):
    """Item 4: BatchedNMS exists only up to TensorRT 10; EfficientNMS_TRT is deprecated."""
    from harness.trt.capability import PLUGIN_AVAILABILITY, check_graph, nms_variant_problem

    assert "removed in TensorRT 11" in PLUGIN_AVAILABILITY["BatchedNMSDynamic_TRT"]
    assert "deprecated since TensorRT 10.12" in PLUGIN_AVAILABILITY["EfficientNMS_TRT"]
    problems = check_graph(_efficient_nms_model(), rtx, "fp32")
    assert "deprecated since TensorRT 10.12" in problems[0].fix
    trt11 = types.SimpleNamespace(name="tensorrt", major=11, label="TensorRT 11.1.0.8")
    trt10 = types.SimpleNamespace(name="tensorrt", major=10, label="TensorRT 10.13.0.35")
    assert "removed in TensorRT 11" in str(nms_variant_problem("batched_nms", trt11))
    assert nms_variant_problem("batched_nms", trt10) is None
    assert nms_variant_problem("efficient_nms", trt11) is None
