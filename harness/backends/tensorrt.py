"""TensorRT: full TensorRT 10.x / 11.x, or TensorRT-RTX, detected at run time.

``load`` is two lazy, cached steps: ``build`` (export → precision graph →
static capability check → engine, cached by content) and ``activate``
(deserialize and bind on the GPU).  Building needs no GPU with TensorRT-RTX,
so a CPU-only machine still proves that a cell's graph parses and builds; the
cell is then recorded ``skipped`` with the build facts and the reason it
cannot execute here.

I/O are torch CUDA tensors (no pycuda: torch already owns the CUDA context
and allocator; a second context from pycuda would hold pointers TensorRT
cannot use in torch's context).  ``execute_async_v3`` runs on a dedicated
non-default stream created at activate (TensorRT's NvInferRuntime.h warns that
the default stream adds ``cudaDeviceSynchronize()`` calls); ``timing_context``
makes it torch's current stream, so the CUDA events of the timing loop are
recorded on the stream the engine runs on.  Every ``set_input_shape``,
``set_tensor_address`` and ``execute_async_v3`` result is checked (as Polygraphy's
TrtRunner does): a refused shape or a failed enqueue fails the cell with the
reason instead of scoring uninitialised output buffers.  Outputs are bound and
returned by name.
"""
from __future__ import annotations

from pathlib import Path

from harness.backends.base import Runner, SkipCell
from harness.backends.nms_outputs import decode_nms_outputs
from harness.errors import UserError

# Compute capabilities TensorRT-RTX's runtime supports (Ampere, Ada, Blackwell consumer).
RTX_RUNTIME_CC = ("8.0", "8.6", "8.9", "12.0")


class EngineExecutionError(UserError):
    """TensorRT refused a shape or an enqueue: the cell fails at its current stage with this line."""


class TensorRTRunner(Runner):
    input_name = "images"
    source = None  # an onnx: model (harness.backends.onnx_model.OnnxModel), set by build()

    def load(self) -> None:
        self.build()
        self.activate()

    # ------------------------------------------------------------------ build

    def build(self) -> Path:
        from harness.trt.capability import check_graph
        from harness.trt.flavour import detect, why_unavailable

        self.flavour = detect()
        if self.flavour is None:
            raise SkipCell(f"TensorRT is not installed here: {why_unavailable()}")
        self.info.facts["tensorrt"] = {"flavour": self.flavour.name, "version": self.flavour.version,
                                       "topk_max": self.flavour.topk_max,
                                       "topk_max_source": getattr(self.flavour, "topk_max_source", "")}
        self._check_nms_variant()  # before any export: a variant this TensorRT cannot have
        self._select_device()
        self.source = None
        if getattr(self.ctx, "is_onnx_source", False):  # stand-in contexts in tests lack it
            return self._build_onnx_source()
        model_cpu = self.ctx.build_model("cpu")
        self.test_cfg = self.ctx.mm_test_cfg(model_cpu.bbox_head.test_cfg)
        pre_topk = self._pre_topk()
        self.ctx.stage("export")
        from harness.export.loader import export_for_cell

        onnx_path, facts = export_for_cell(self.ctx, model_cpu, pre_topk=pre_topk)
        self.info.facts.update(facts)
        self._record_nms_cap(pre_topk, model_cpu.bbox_head)
        del model_cpu
        self.ctx.stage("build")
        self._refuse(check_graph(onnx_path, self.flavour, "fp32"))  # before calibrating anything
        graph, calibrator = self._precision_graph(onnx_path)
        self._refuse(check_graph(graph, self.flavour, _graph_precision(self.cell["precision"]),
                                 calibrator_available=calibrator is not None))
        self.engine_path = self._engine(graph, calibrator)
        return self.engine_path

    def _build_onnx_source(self) -> Path:
        """A user's ONNX file: the same capability checks and build, its own Q/DQ used as is."""
        from harness.backends.onnx_model import OnnxModel
        from harness.trt.capability import check_graph

        self.source = OnnxModel(self.ctx, self.info)
        self.source.load()
        c = self.source.contract
        self.input_name = c.input_name
        self.ctx.stage("build")
        self._refuse(check_graph(c.path, self.flavour, "fp32"))
        precision = self.cell["precision"]
        if precision == "int8" and c.has_qdq:
            graph, calibrator = Path(c.path), None
            self.info.facts["precision_source"] = "the graph's own Q/DQ nodes, used as is"
        elif precision == "fp16" and c.has_qdq:
            raise SkipCell("the graph already holds Q/DQ nodes (an int8 model): fp16 does not apply")
        else:
            graph, calibrator = self._precision_graph(Path(c.path))
        self._refuse(check_graph(graph, self.flavour, precision,
                                 calibrator_available=calibrator is not None))
        self.engine_path = self._engine(graph, calibrator)
        return self.engine_path

    def _check_nms_variant(self) -> None:
        """BatchedNMS on TensorRT 11 is refused before exporting; EfficientNMS's deprecation is said."""
        from harness.trt.capability import EFFICIENT_NMS_DEPRECATION, nms_variant_problem

        problem = nms_variant_problem(self.cell["nms"], self.flavour)
        if problem is not None:
            raise SkipCell(f"{self.flavour.label} cannot build this graph: {problem}")
        if self.cell["nms"] == "efficient_nms" and self.flavour.name == "tensorrt":
            self.info.warnings.append(EFFICIENT_NMS_DEPRECATION)

    def _select_device(self) -> None:
        """Build (and calibrate) on the cell's GPU: TensorRT builds for the current device, and
        the engine cache key names the cell's GPU."""
        import torch

        device = self.cell["device"]
        if device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.set_device(torch.device(device))

    def _record_nms_cap(self, pre_topk, head) -> None:
        """The in-graph NMS's hidden candidate cap for this graph, recorded and warned."""
        from harness.trt.capability import nms_cap_warning, nms_candidate_cap

        if self.cell["nms"] == "none":
            return
        info = nms_candidate_cap(self.cell["nms"], pre_topk, _num_boxes(head, self.cell["imgsz"]),
                                 int(head.num_classes))
        self.info.facts["nms_candidate_cap"] = info
        warning = nms_cap_warning(info)
        if warning:
            self.info.warnings.append(warning)

    def _refuse(self, problems) -> None:
        if problems:
            raise SkipCell(f"{self.flavour.label} cannot build this graph: "
                           + "; ".join(str(p) for p in problems))

    def _pre_topk(self) -> int | None:
        """The in-graph NMS pre-top-k, fitted to TensorRT's TopK limit (clamp or refuse)."""
        from harness.trt.capability import clamp_pre_topk

        if self.cell["nms"] == "none":
            return None
        requested = self.test_cfg.get("nms_pre", -1)
        if requested is None or requested <= 0:
            requested = 30000  # "no cap" in mmyolo: the graph still needs a TopK size
        policy = self.cell["eval"].get("pre_topk_policy", "clamp")
        value, warning = clamp_pre_topk(requested, self.flavour, policy)
        if warning:
            self.info.warnings.append(warning)
        self.info.facts["deploy_pre_topk"] = value
        return value

    def _precision_graph(self, onnx_path: Path):
        """TensorRT 11 / RTX take precision from the graph; TensorRT 10 from flags and calibrators."""
        precision = self.cell["precision"]
        if precision == "fp16" and self.flavour.strongly_typed_only:
            from harness.export.fp16 import to_fp16

            path, info = to_fp16(onnx_path, self.ctx.cache_dir)
            self.info.facts.update(info)
            return path, None
        if precision not in ("int8", "int8-mixed"):
            return onnx_path, None
        c = self.cell["calibration"]
        mixed = precision == "int8-mixed" or c.get("ap_budget") is not None
        if mixed or c.get("sensitivity"):  # one mixed Q/DQ graph, explicit quantization on every flavour
            from harness.calibration.sensitivity import int8_graph

            path, info = int8_graph(self.ctx, onnx_path, self.test_cfg)
            self.info.facts.update(info)
            mix = info.get("int8_mixed")
            if mix and mix["met"] is False:  # None: a given mix (calibration.float_groups)
                self.info.warnings.append(mix["note"])
            return path, None
        calib = self.ctx.calibration_set()
        # implicit-quantization calibrators cannot smooth: calibration.smoothing takes the Q/DQ path
        if self.flavour.has_calibrators and c["method"] in ("entropy", "minmax") and c.get("smoothing") is None:
            from harness.trt.calibrator import make_calibrator

            from harness.measure.provenance import file_hash
            from harness.trt.cache import calibration_cache_name

            gpu, cc = _gpu_identity(self.cell["device"])
            cache = Path(self.ctx.cache_dir) / "int8" / calibration_cache_name(
                file_hash(onnx_path), self.flavour.name, self.flavour.version, c["method"],
                calib.sha256, gpu, cc)
            cache.parent.mkdir(parents=True, exist_ok=True)
            self.info.facts.update({"calibration_method": c["method"], "calibration_cache": str(cache),
                                    "calibration_data_sha256": calib.sha256,
                                    "calibration_images": calib.images})
            return onnx_path, make_calibrator(self.flavour.module, c["method"], calib.batches, cache,
                                                input_name=self.input_name)
        from harness.calibration.qdq import quantize_qdq

        path, info = quantize_qdq(onnx_path, calib, c["method"], c["percentile"], self.ctx.cache_dir,
                                  input_name=self.input_name, smoothing=c.get("smoothing"))
        self.info.facts.update(info)
        return path, None

    def _engine(self, graph: Path, calibrator) -> Path:
        from harness.measure.provenance import file_hash
        from harness.trt.build import build_engine
        from harness.trt.cache import cached_engine, engine_cache_key, engine_meta, timing_cache_name

        profile = self.profile()
        self._select_device()
        gpu, cc = _gpu_identity(self.cell["device"])
        calib_hash = self.info.facts.get("calibration_cache_sha256") or self.info.facts.get(
            "calibration_data_sha256")
        key = engine_cache_key(file_hash(graph), self.cell["precision"], profile, self.flavour.name,
                               self.flavour.version, gpu, cc, calib_hash)
        cache_dir = Path(self.ctx.cache_dir) / "engines"
        engine = cached_engine(cache_dir, key, lambda: build_engine(
            graph, flavour=self.flavour, precision=_graph_precision(self.cell["precision"]), profile=profile,
            calibrator=calibrator, timing_cache_path=cache_dir / timing_cache_name(
                self.flavour.name, self.flavour.version, gpu, cc), input_name=self.input_name))
        meta = engine_meta(engine)
        self.info.facts["engine"] = {k: meta.get(k) for k in (
            "engine_size", "sha256", "build_time_s", "typing", "flags", "tf32", "profile",
            "timing_cache", "log_path", "warnings")}
        self.info.facts["engine"]["gpu"], self.info.facts["engine"]["compute_capability"] = gpu, cc
        self.info.artifacts["engine"] = str(engine)
        self.info.warnings.extend(meta.get("warnings") or [])
        return engine

    def profile(self) -> tuple[int, int, int]:
        """(min, opt, max) batch: min 1, so the accuracy pass's short last chunk (500 images at
        batch 8 leave 4) is inside the profile; opt the cell's batch; max the matrix's largest."""
        fixed = self.source.contract.batch if getattr(self, "source", None) is not None else None
        if fixed:  # an onnx: model whose graph has a static batch: the only shape it takes
            return fixed, fixed, fixed
        batches = self.cell.get("batch_axis") or [self.cell["batch"]]
        return 1, self.cell["batch"], max(max(batches), self.cell["batch"])

    # --------------------------------------------------------------- execute

    def activate(self) -> None:
        why = self._cannot_execute()
        if why:
            e = self.info.facts["engine"]
            raise SkipCell(f"engine built ({self.flavour.label}, {e['engine_size'] / 2**20:.1f} MiB, "
                           f"{e['build_time_s'] or 0:.1f} s) but cannot execute here: {why}")
        import torch

        from harness.export.deploy import OUTPUT_NAMES

        trt = self.flavour.module
        self.device = torch.device(self.cell["device"])
        torch.cuda.set_device(self.device)
        free_before = _free_memory(self.device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise EngineExecutionError(f"TensorRT could not deserialize {self.engine_path}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineExecutionError(f"TensorRT could not create an execution context for "
                                       f"{self.engine_path.name} (device memory?)")
        # TensorRT's own stream: never the legacy default stream (NvInferRuntime.h, enqueueV3)
        self.stream = torch.cuda.Stream(device=self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        outputs = {n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}
        # an onnx: model's outputs are whatever its graph has (its contract names the roles)
        wanted = OUTPUT_NAMES[self.cell["nms"]] if self.source is None else [
            n for n in names if n in outputs]
        if self.input_name not in names or set(wanted) - outputs:
            raise EngineExecutionError(
                f"engine {self.engine_path.name} has tensors {names}; detbench's "
                f"nms={self.cell['nms']} graph needs input '{self.input_name}' and outputs "
                f"{list(wanted)}")
        self.output_names = list(wanted)  # by name, in detbench's order, whatever the engine's
        self.info.facts["engine_memory"] = _engine_memory(
            self.engine, self.engine_path.stat().st_size, free_before, _free_memory(self.device))

    def _cannot_execute(self) -> str | None:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU on this machine"
        cc = "{}.{}".format(*torch.cuda.get_device_capability(torch.device(self.cell["device"])))
        if self.flavour.name == "tensorrt_rtx" and cc not in RTX_RUNTIME_CC:
            return (f"TensorRT-RTX's runtime does not support compute capability {cc} "
                    f"({torch.cuda.get_device_name()}); install TensorRT 10.x/11.x to run engines here")
        return None

    def bind_forward(self, inputs):
        """Set shapes and addresses once; the timed call is ``execute_async_v3`` alone."""
        import torch

        dtype = inputs.dtype if self.source is not None else torch.float32  # an onnx: model's own dtype
        x = inputs.to(self.device, dtype).contiguous()
        shape = tuple(x.shape)
        if not self.context.set_input_shape(self.input_name, shape):
            raise EngineExecutionError(
                f"TensorRT refused input shape {shape} for '{self.input_name}' (set_input_shape "
                f"returned False): the engine's profile is batch {self._profile_text()}")
        self._address(self.input_name, x)
        outs = []
        for name in self.output_names:
            out_shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in out_shape):
                raise EngineExecutionError(f"output '{name}' has unresolved shape {out_shape} for "
                                           f"input {shape}")
            out = torch.empty(out_shape, dtype=_torch_dtype(self.engine.get_tensor_dtype(name)),
                              device=self.device)
            self._address(name, out)
            outs.append(out)
        self._bound = (x, outs)  # keep the buffers alive while the context points at them
        # the input copy and the allocations happened on torch's current stream
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        context, handle = self.context, self.stream.cuda_stream

        def run():
            if not context.execute_async_v3(handle):
                raise EngineExecutionError(
                    f"TensorRT execute_async_v3 returned False for input {shape} (see the "
                    f"TensorRT log): the outputs were not computed")
            return outs
        return run

    def _address(self, name: str, tensor) -> None:
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise EngineExecutionError(f"TensorRT refused the address of '{name}' "
                                       f"(set_tensor_address returned False)")

    def _profile_text(self) -> str:
        profile = self.info.facts.get("engine", {}).get("profile")
        return "min/opt/max " + "/".join(map(str, profile)) if profile else "unknown"

    def timing_context(self):
        """The timed loop's CUDA events are recorded on the stream TensorRT runs on."""
        import torch

        return torch.cuda.stream(self.stream)

    def forward(self, inputs):
        import torch

        outs = self.bind_forward(inputs)()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return [o.clone() for o in outs]

    def graphed_forward(self, inputs):
        """``execute_async_v3`` captured in a CUDA graph on TensorRT's stream, or None.

        One eager run first, as TensorRT requires.  An engine holding operations that are not
        permitted under capture (data-dependent layers such as INMSLayer) makes the enqueue
        return False while capturing: then the graph is dropped, a warning recorded and the
        cell is timed eagerly (what trtexec does, samples/common/sampleInference.cpp).
        """
        import torch

        run = self.bind_forward(inputs)
        run()
        self.stream.synchronize()
        why = None
        capturable = getattr(self.context, "is_stream_capturable", None)
        if capturable is not None and not capturable(self.stream.cuda_stream):
            why = "the execution context reports its stream is not capturable"
        graph = None
        if why is None:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=self.stream):
                    ok = self.context.execute_async_v3(self.stream.cuda_stream)
                if not ok:
                    why = "execute_async_v3 returned False during capture"
            except RuntimeError as exc:  # torch's capture_end on an invalidated capture
                why = f"capture failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        if why is not None:
            self.info.warnings.append(
                f"CUDA graph not used, timed eagerly instead: {why} (the engine holds operations "
                f"not permitted under CUDA graph capture, e.g. the data-dependent NMS layer)")
            self.info.facts["cuda_graph"] = {"requested": True, "captured": False, "reason": why}
            self._graph = None
            return None
        self.info.facts["cuda_graph"] = {"requested": True, "captured": True}
        self._graph = graph
        return graph.replay

    def postprocess(self, raw, metas):
        if self.source is not None:
            return self.source.postprocess(self.output_names, raw, metas)
        if self.cell["nms"] == "none":
            from harness.backends.base import Detections
            from harness.export.host_nms import host_postprocess

            boxes, scores = raw
            return [Detections(b.numpy(), s.numpy(), l.numpy())
                    for b, s, l in host_postprocess(boxes.cpu(), scores.cpu(), metas, self.test_cfg)]
        return decode_nms_outputs([o.cpu() for o in raw], metas)

    def decoded(self, prepared):
        if self.source is not None and getattr(self, "context", None) is not None:
            return self.source.decoded(self.output_names, self.forward(prepared.inputs))
        if self.cell["nms"] != "none" or getattr(self, "context", None) is None:
            return None
        boxes, scores = self.forward(prepared.inputs)
        return boxes.float().cpu().numpy(), scores.float().cpu().numpy()

    def close(self) -> None:
        self.context = self.engine = self.runtime = None
        self._bound = self._graph = self.stream = None


def _graph_precision(precision: str) -> str:
    """int8-mixed is an int8 Q/DQ graph whose float layers simply have no Q/DQ."""
    return "int8" if precision == "int8-mixed" else precision


def _num_boxes(head, imgsz) -> int:
    """Anchors per image the decode produces: one per prior per feature-map cell."""
    height, width = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    strides = [s if isinstance(s, int) else s[0] for s in head.featmap_strides]
    cells = sum(-(-int(height) // int(s)) * -(-int(width) // int(s)) for s in strides)
    return cells * int(getattr(head, "num_base_priors", 1))


def _free_memory(device):
    try:
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    except Exception:
        return None


def _engine_memory(engine, plan_bytes: int, free_before, free_after) -> dict:
    """Device memory from the engine itself, not torch's allocator (which never sees it).

    ``device_memory_size_v2`` (TensorRT >= 10.1; ``device_memory_size`` before) is the
    execution context's activation/scratch memory; the weights live in the deserialized
    engine, whose plan size bounds them (``weights_bytes_upper_bound``); ``deserialize_delta_bytes`` is what cudaMemGetInfo
    saw disappear while the engine and its context were created (device-wide: other processes
    on the GPU can move it).
    """
    out = {"source": "ICudaEngine (not torch.cuda.max_memory_allocated)",
           "weights_bytes_upper_bound": int(plan_bytes)}
    for attr in ("device_memory_size_v2", "device_memory_size"):
        value = getattr(engine, attr, None)
        if value is not None:
            out["context_device_memory_bytes"] = int(value)
            out["context_device_memory_api"] = attr
            break
    streamable = getattr(engine, "streamable_weights_size", None)
    if streamable is not None:
        out["streamable_weights_bytes"] = int(streamable)
    if free_before is not None and free_after is not None:
        out["deserialize_delta_bytes"] = int(free_before - free_after)
    return out


def _gpu_identity(device: str) -> tuple[str, str]:
    """GPU name and compute capability for the engine cache key ('none' on a CPU-only build)."""
    try:
        import torch

        if torch.cuda.is_available():
            dev = torch.device(device) if device.startswith("cuda") else torch.device("cuda")
            return torch.cuda.get_device_name(dev), "{}.{}".format(*torch.cuda.get_device_capability(dev))
    except Exception:  # no usable CUDA: an RTX build on CPU
        pass
    return "none", "0.0"


def _torch_dtype(trt_dtype):
    import torch

    name = str(trt_dtype).split(".")[-1].upper()
    return {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32,
            "INT64": torch.int64, "INT8": torch.int8, "BOOL": torch.bool, "BF16": torch.bfloat16}[name]
