"""TensorRT execution paths, on a CPU: a fake TensorRT runtime and a fake CUDA.

Full TensorRT cannot run here, so what only a GPU could show is checked against stand-ins that
behave as NVIDIA documents: ``set_input_shape`` returns False outside the engine's profile,
``execute_async_v3`` returns False when it cannot enqueue and, while a CUDA graph is being
captured, for an engine with data-dependent layers (NvInferRuntime.h; trtexec's
samples/common/sampleInference.cpp).  The fake GPU's memory is host memory: the cells run with
device 'cpu' so that the runner's tensors are real host tensors, whose ``data_ptr()`` the fake
engine reads and writes through ctypes exactly as TensorRT would use a device address.  Every
test here failed on the code before issue #11 was fixed.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import types

import numpy as np
import pytest
import torch

from harness.backends.base import SkipCell
from harness.errors import UserError

H = W = 8
NUM_CLASSES = 80
CONTEXT_MEMORY = 12_345_678
WEIGHTS = 3_000_000


# --------------------------------------------------------------------------- fake CUDA

class FakeStream:
    handles = iter(range(0x7000, 0x8000))

    def __init__(self, device=None, priority=0, handle=None):
        self.cuda_stream = next(self.handles) if handle is None else handle
        self.waited_on: list[int] = []

    def wait_stream(self, other):
        self.waited_on.append(other.cuda_stream)

    def synchronize(self):
        pass


class FakeCuda:
    """The parts of torch.cuda the runner and the timing loop use, for one fake GPU."""

    def __init__(self):
        self.default = FakeStream(handle=0)   # the legacy default stream
        self.current = self.default
        self.device = 0
        self.capturing = False
        self.events: list[int] = []           # stream each CUDA event was recorded on
        self.free = 80 << 30
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                pass

            def record(self, stream=None):
                fake.events.append((stream or fake.current).cuda_stream)

            def synchronize(self):
                pass

            def elapsed_time(self, other):
                return 1.0

        class CUDAGraph:
            def replay(self):
                pass

        self.Event, self.CUDAGraph = Event, CUDAGraph

    def install(self, monkeypatch):
        c = torch.cuda
        for name, value in {
            "is_available": lambda: True,
            "get_device_capability": lambda device=None: (9, 0),
            "get_device_name": lambda device=None: "NVIDIA H200 (fake)",
            "set_device": self.set_device, "current_device": lambda: self.device,
            "Stream": FakeStream, "stream": self.stream, "current_stream": lambda device=None: self.current,
            "Event": self.Event, "synchronize": lambda device=None: None,
            "CUDAGraph": self.CUDAGraph, "graph": self.graph,
            "mem_get_info": lambda device=None: (self.free, 80 << 30),
        }.items():
            monkeypatch.setattr(c, name, value)
        return self

    def set_device(self, device):
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if device.type == "cuda":
            self.device = device.index or 0

    @contextlib.contextmanager
    def stream(self, stream):
        before, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = before

    @contextlib.contextmanager
    def graph(self, graph, pool=None, stream=None, capture_error_mode="global"):
        with self.stream(stream or FakeStream()):
            self.capturing = True
            try:
                yield
            finally:
                self.capturing = False


# --------------------------------------------------------------------------- fake TensorRT

class DType:
    def __init__(self, name):
        self.name = name

    def __str__(self):
        return f"DataType.{self.name}"


# outputs of detbench's graphs, listed by the fake engine in an order other than detbench's
ENGINE_OUTPUTS = {
    "none": {"scores": ("FLOAT", lambda n: (n, 21, NUM_CLASSES)), "boxes": ("FLOAT", lambda n: (n, 21, 4))},
    "efficient_nms": {"det_scores": ("FLOAT", lambda n: (n, 5)), "num_dets": ("INT32", lambda n: (n, 1)),
                      "det_classes": ("INT32", lambda n: (n, 5)), "det_boxes": ("FLOAT", lambda n: (n, 5, 4))},
}
ENGINE_OUTPUTS["onnx"] = {"labels" if k == "det_classes" else k.replace("det_", ""): v
                          for k, v in ENGINE_OUTPUTS["efficient_nms"].items()}
ENGINE_OUTPUTS["onnx"]["num_dets"] = ENGINE_OUTPUTS["onnx"].pop("num_dets")


class FakeEngine:
    def __init__(self, plan: dict, cuda: FakeCuda):
        self.profile = plan["profile"]
        self.nms = plan["nms"]
        self.data_dependent = self.nms == "onnx"  # INMSLayer
        self.outputs = ENGINE_OUTPUTS[self.nms]
        self.names = [*list(self.outputs)[:1], "images", *list(self.outputs)[1:]]
        self.cuda = cuda
        self.device_memory_size_v2 = CONTEXT_MEMORY
        self.enqueued_on: list[int] = []
        self.context = None

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "images" else "OUTPUT"

    def get_tensor_dtype(self, name):
        return DType("FLOAT" if name == "images" else self.outputs[name][0])

    def create_execution_context(self):
        self.context = FakeContext(self)
        self.cuda.free -= CONTEXT_MEMORY
        return self.context


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.shape = None          # the last accepted input shape
        self.last_refused = False
        self.addresses: dict[str, int] = {}
        self.fail_execute = False

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile
        if name != "images" or len(shape) != 4 or not lo <= shape[0] <= hi:
            self.last_refused = True  # TensorRT logs an error and keeps the previous shape
            return False
        self.shape, self.last_refused = tuple(shape), False
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name):
        if self.shape is None:
            return (-1,) + self.engine.outputs[name][1](1)[1:]
        return self.engine.outputs[name][1](self.shape[0])

    def execute_async_v3(self, stream_handle):
        self.engine.enqueued_on.append(stream_handle)
        if self.engine.cuda.capturing and self.engine.data_dependent:
            return False  # operations not permitted under capture (sampleInference.cpp)
        if self.fail_execute or self.last_refused or self.shape is None:
            return False
        n = self.shape[0]
        images = _view(self.addresses["images"], np.float32, self.shape)
        value = images[:, 0, 0, 0]                       # each fake image carries its id
        out = {name: _view(self.addresses[name], np.float32 if dt == "FLOAT" else np.int32, shape(n))
               for name, (dt, shape) in self.engine.outputs.items()}
        if self.engine.nms == "none":
            out["boxes"][:] = 1.0
            out["scores"][:] = 0.25
            return True
        prefix = "det_" if self.engine.nms == "efficient_nms" else ""
        out["num_dets"][:] = 1
        out[f"{prefix}boxes"][:] = 0
        out[f"{prefix}boxes"][:, 0] = np.stack([value, value, value + 10, value + 20], axis=1)
        out[f"{prefix}scores"][:] = 0
        out[f"{prefix}scores"][:, 0] = 0.5
        out["det_classes" if prefix else "labels"][:] = 1
        return True


def _view(ptr, dtype, shape):
    count = int(np.prod(shape))
    ctype = ctypes.c_float if dtype == np.float32 else ctypes.c_int32
    return np.ctypeslib.as_array((ctype * count).from_address(ptr)).reshape(shape)


def fake_tensorrt(cuda: FakeCuda, version="10.13.0.35"):
    class Logger:
        WARNING = 2

        def __init__(self, severity=None):
            pass

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan: bytes):
            cuda.free -= WEIGHTS
            return FakeEngine(json.loads(plan), cuda)

    class Calibrator:
        def __init__(self):
            pass

    return types.SimpleNamespace(
        __name__="tensorrt", __version__=version, Logger=Logger, Runtime=Runtime,
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        IInt8EntropyCalibrator2=type("IInt8EntropyCalibrator2", (Calibrator,), {}),
        IInt8MinMaxCalibrator=type("IInt8MinMaxCalibrator", (Calibrator,), {}))


def fake_flavour(module, version="10.13.0.35"):
    major = int(version.split(".")[0])
    return types.SimpleNamespace(
        name="tensorrt", version=version, label=f"TensorRT {version}", module=module, major=major,
        topk_max=3840, topk_max_source="fake", strongly_typed_only=major >= 11,
        has_calibrators=major < 11, plugins=frozenset({"EfficientNMS_TRT"} if major >= 11 else
                                                      {"EfficientNMS_TRT", "BatchedNMSDynamic_TRT"}))


# --------------------------------------------------------------------------- the runner

@pytest.fixture
def tiny_onnx(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, H, W])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, H, W])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["images"], ["y"])],
                                                 "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "tiny.onnx"
    path.write_bytes(model.SerializeToString())
    return path


class Setup:
    """A TensorRTRunner wired to the fakes: real build() / activate() / bind / infer code."""

    def __init__(self, monkeypatch, tmp_path, onnx_path, *, version="10.13.0.35"):
        self.cuda = FakeCuda().install(monkeypatch)
        self.trt = fake_tensorrt(self.cuda, version)
        self.flavour = fake_flavour(self.trt, version)
        self.builds: list[dict] = []
        self.tmp_path, self.onnx_path = tmp_path, onnx_path
        monkeypatch.setattr("harness.trt.flavour.detect", lambda prefer=None: self.flavour)
        monkeypatch.setattr("harness.export.loader.export_for_cell", self.export_for_cell)
        monkeypatch.setattr("harness.trt.build.build_engine", self.build_engine)

    def export_for_cell(self, ctx, model, pre_topk=None):
        """One small graph per NMS variant (they differ, so their engines do too)."""
        import onnx

        proto = onnx.load(str(self.onnx_path))
        proto.doc_string = f"nms={ctx.cell['nms']} pre_topk={pre_topk}"
        path = self.tmp_path / f"export_{ctx.cell['nms']}.onnx"
        path.write_bytes(proto.SerializeToString())
        return path, {"onnx": str(path)}

    def build_engine(self, graph, *, flavour, precision, profile, calibrator=None,
                     timing_cache_path=None, **_):
        from harness.trt.build import BuildResult

        self.builds.append({"device": torch.cuda.current_device(), "profile": profile,
                            "timing_cache_path": str(timing_cache_path)})
        plan = json.dumps({"profile": list(profile), "nms": self.nms}).encode()
        return BuildResult(engine_bytes=plan, build_time_s=0.01, log="fake build",
                           engine_size=len(plan), flavour=flavour.label, precision=precision,
                           typing="strong", profile=tuple(profile))

    def runner(self, *, nms="efficient_nms", batch=8, batch_axis=(8,), device="cpu",
               precision="fp32", model=None):
        from harness.backends.tensorrt import TensorRTRunner

        self.nms = nms
        cell = {"key": "fake", "backend": "tensorrt", "model": "m", "precision": precision,
                "batch": batch, "batch_axis": list(batch_axis), "imgsz": 64, "device": device,
                "nms": nms, "eval": {"pre_topk_policy": "clamp"},
                "calibration": {"method": "minmax", "percentile": 99.99}}
        head = types.SimpleNamespace(test_cfg={}, num_classes=NUM_CLASSES, featmap_strides=[8, 16, 32],
                                     num_base_priors=1)
        ctx = types.SimpleNamespace(
            cell=cell, cache_dir=self.tmp_path, stage=lambda name: None,
            build_model=model or (lambda device: types.SimpleNamespace(bbox_head=head)),
            mm_test_cfg=lambda cfg: {"nms_pre": 1000, "score_thr": 0.001, "max_per_img": 5},
            calibration_set=lambda: types.SimpleNamespace(sha256="c" * 64, images=2, batches=[]))
        return TensorRTRunner(cell, ctx)


def prepared(ids):
    inputs = torch.zeros((len(ids), 3, H, W))
    for i, image_id in enumerate(ids):
        inputs[i] = float(image_id)
    metas = [{"ori_shape": (100, 100), "img_shape": (H, W), "scale_factor": (1.0, 1.0),
              "pad_param": [0, 0, 0, 0]} for _ in ids]
    return types.SimpleNamespace(inputs=inputs, metas=metas, image_ids=list(ids))


@pytest.fixture
def setup(monkeypatch, tmp_path, tiny_onnx):
    return Setup(monkeypatch, tmp_path, tiny_onnx)


# --------------------------------------------------------------------------- the tests

def test_short_last_chunk_of_the_accuracy_pass_is_inside_the_profile(setup, monkeypatch):
    """Item 1: 20 images at batch 8 with batch_sizes [8] end with a chunk of 4.

    The worker's streaming accuracy pass is run with the batches a BatchStream yields for
    20 images at batch 8 (8, 8, 4): the engine profile must take the short last chunk.
    """
    import harness.models.stream as stream_mod
    from harness.runner.worker import _entries, _infer_stream

    class Chunks:  # BatchStream's batching (contiguous, in order, last one short), no decoding
        def __init__(self, dataset, pre, batch, device, cache=None, **kw):
            self.ids, self.batch, self.stats = [im.id for im in dataset.images], batch, {}

        def __iter__(self):
            for start in range(0, len(self.ids), self.batch):
                yield prepared(self.ids[start:start + self.batch])

    monkeypatch.setattr(stream_mod, "BatchStream", Chunks)
    runner = setup.runner(batch=8, batch_axis=(8,))
    runner.load()
    assert setup.builds[0]["profile"][0] == 1 and tuple(setup.builds[0]["profile"][1:]) == (8, 8)
    ids = list(range(20))
    dataset = types.SimpleNamespace(category_ids=[1, 2, 3],
                                    images=[types.SimpleNamespace(id=i) for i in ids])
    ctx = types.SimpleNamespace(cell={**runner.cell, "alignment": {"images": 0}}, dataset=dataset,
                                input_cache=lambda pre: None, box_type="horizontal")
    rows, dropped, _, _ = _infer_stream(runner, None, ctx)
    assert dropped == 0 and rows.shape == (20, 7)  # a horizontal cell collects to_coco_rows arrays
    dets = _entries(rows)
    assert [d["image_id"] for d in dets] == ids  # every image once, the last four included
    for d in dets:
        v = d["image_id"]
        assert d["bbox"] == [v, v, 10, 20] and d["category_id"] == 2 and d["score"] == 0.5


def test_refused_shape_or_failed_enqueue_fails_the_cell_with_the_reason(setup):
    """Item 1 / #10 item 13: never score uninitialised buffers, never time a failed enqueue."""
    runner = setup.runner(batch=8, batch_axis=(1, 8))
    runner.load()
    assert [d.boxes[0, 0] for d in runner.infer(prepared(range(8)))] == list(range(8))
    with pytest.raises(UserError, match=r"refused input shape \(9, 3, 8, 8\).*set_input_shape "
                                        r"returned False.*min/opt/max 1/8/8"):
        runner.infer(prepared(range(9)))
    runner.context.fail_execute = True
    with pytest.raises(UserError, match="execute_async_v3 returned False"):
        runner.infer(prepared(range(8)))
    run = runner.bind_forward(prepared(range(8)).inputs)  # what the timed loop calls
    with pytest.raises(UserError, match="execute_async_v3 returned False"):
        run()


def test_enqueue_and_timing_events_use_a_dedicated_stream(setup):
    """Item 2: not the legacy default stream; the CUDA events bracket the engine's stream."""
    from harness.measure.timing import TimingPlan, time_calls

    runner = setup.runner()
    runner.load()
    stream = runner.stream.cuda_stream
    assert stream != 0 and stream != setup.cuda.default.cuda_stream
    out = runner.forward(prepared(range(8)).inputs)
    assert setup.cuda.default.waited_on[-1] == stream  # results read after TensorRT's stream
    assert out[0].shape == (8, 1)
    run = runner.bind_forward(prepared(range(8)).inputs)
    setup.cuda.events.clear()
    enqueued_before = len(runner.engine.enqueued_on)
    with runner.timing_context():
        samples = time_calls(run, TimingPlan(warmup=2, iterations=5), "cuda")
    assert len(samples) == 5
    assert setup.cuda.events and set(setup.cuda.events) == {stream}
    assert set(runner.engine.enqueued_on) == {stream}
    assert len(runner.engine.enqueued_on) - enqueued_before == 7


def test_cuda_graph_capture_failure_falls_back_to_eager_with_a_warning(setup):
    """Item 7: an INMSLayer engine cannot be captured; the cell is timed eagerly and says so."""
    from harness.measure.measure_cell import _maybe_graph

    runner = setup.runner(nms="onnx")
    runner.load()
    forward = _maybe_graph(runner, prepared(range(8)).inputs, True)
    assert not getattr(forward, "graphed", False)
    assert any("CUDA graph not used" in w and "execute_async_v3 returned False during capture" in w
               for w in runner.info.warnings)
    assert runner.info.facts["cuda_graph"]["captured"] is False
    outs = forward()  # the eager fallback really executes
    assert int(outs[0][0, 0]) == 1

    plain = setup.runner(nms="efficient_nms")  # control: a capturable engine is graphed
    plain.load()
    assert getattr(_maybe_graph(plain, prepared(range(8)).inputs, True), "graphed", False)
    assert plain.info.facts["cuda_graph"]["captured"] is True


def test_outputs_are_selected_by_name(setup):
    """Item 11: the engine lists 'scores' before 'boxes'; the runner returns boxes, scores."""
    runner = setup.runner(nms="none")
    runner.load()
    assert runner.engine.names[0] == "scores"
    boxes, scores = runner.forward(prepared(range(8)).inputs)
    assert boxes.shape == (8, 21, 4) and scores.shape == (8, 21, NUM_CLASSES)
    assert float(boxes.max()) == 1.0 and float(scores.max()) == 0.25


def test_engine_is_built_on_the_cells_gpu(setup):
    """Item 9: TensorRT builds for the current device; the cache key names the cell's GPU."""
    runner = setup.runner(device="cuda:1")
    runner.build()
    assert setup.builds[0]["device"] == 1


def test_engine_memory_is_reported_from_the_engine(setup):
    """Item 8: torch's allocator never sees TensorRT's memory; the engine says what it needs."""
    runner = setup.runner()
    runner.load()
    memory = runner.info.facts["engine_memory"]
    assert memory["context_device_memory_bytes"] == CONTEXT_MEMORY
    assert memory["context_device_memory_api"] == "device_memory_size_v2"
    assert memory["deserialize_delta_bytes"] == CONTEXT_MEMORY + WEIGHTS
    assert memory["weights_bytes_upper_bound"] == runner.engine_path.stat().st_size


def test_batched_nms_is_refused_on_tensorrt_11_before_any_export(monkeypatch, tmp_path, tiny_onnx):
    """Item 4: BatchedNMS was removed in TensorRT 11; say so before exporting anything."""
    s = Setup(monkeypatch, tmp_path, tiny_onnx, version="11.1.0.8")

    def no_model(device):
        raise AssertionError("the model must not be built for a variant TensorRT 11 lacks")

    runner = s.runner(nms="batched_nms", model=no_model)
    with pytest.raises(SkipCell, match=r"TensorRT 11\.1\.0\.8 .*removed in TensorRT 11"):
        runner.build()


def test_efficient_nms_deprecation_and_candidate_cap_are_recorded(setup):
    """Items 4 and 6: EfficientNMS_TRT is deprecated since 10.12 and keeps 5000 (box, class)
    candidates whatever the graph gives it; both are in the cell's warnings."""
    runner = setup.runner(nms="efficient_nms")
    runner.build()
    assert any("EfficientNMS_TRT is deprecated since TensorRT 10.12" in w for w in runner.info.warnings)
    cap = runner.info.facts["nms_candidate_cap"]
    assert cap["cap"] == 5000 and cap["boxes_in"] == 84  # 8*8 + 4*4 + 2*2 anchors at 64 px, < 1000
    assert cap["pairs_in"] == 84 * NUM_CLASSES and cap["binding"] is True
    assert any("considers at most 5000" in w for w in runner.info.warnings)


def test_calibration_and_timing_caches_are_keyed(setup, tmp_path):
    """Items 5 and 13: a calibration cache per ONNX + TensorRT version (+ GPU); a timing cache
    per TensorRT version + GPU."""
    runner = setup.runner(precision="int8")
    runner.flavour = setup.flavour
    import onnx

    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for path, doc in ((first, "model a"), (second, "model b")):  # two graphs, same images
        proto = onnx.load(str(setup.onnx_path))
        proto.doc_string = doc
        path.write_bytes(proto.SerializeToString())
    _, cal_a = runner._precision_graph(first)
    _, cal_b = runner._precision_graph(second)
    assert cal_a.cache_path != cal_b.cache_path
    assert setup.flavour.version in cal_a.cache_path.name

    runner = setup.runner()
    runner.build()
    timing = setup.builds[-1]["timing_cache_path"]
    assert setup.flavour.version in timing and "sm90" in timing
