"""TensorRT: full TensorRT 10.x / 11.x, or TensorRT-RTX, detected at run time.

``load`` is two lazy, cached steps: ``build`` (export → precision graph →
static capability check → engine, cached by content) and ``activate``
(deserialize and bind on the GPU).  Building needs no GPU with TensorRT-RTX,
so a CPU-only machine still proves that a cell's graph parses and builds; the
cell is then recorded ``skipped`` with the build facts and the reason it
cannot execute here.

I/O are torch CUDA tensors (no pycuda: torch already owns the CUDA context
and allocator; a second context from pycuda would hold pointers TensorRT
cannot use in torch's context).  ``execute_async_v3`` runs on torch's current
stream, so the CUDA events of the timing loop bracket exactly the engine.
"""
from __future__ import annotations

from pathlib import Path

from harness.backends.base import Runner, SkipCell
from harness.backends.nms_outputs import decode_nms_outputs

# Compute capabilities TensorRT-RTX's runtime supports (Ampere, Ada, Blackwell consumer).
RTX_RUNTIME_CC = ("8.0", "8.6", "8.9", "12.0")


class TensorRTRunner(Runner):
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
                                       "topk_max": self.flavour.topk_max}
        self.input_name, self.source = "images", None
        if self.ctx.is_onnx_source:
            return self._build_onnx_source()
        model_cpu = self.ctx.build_model("cpu")
        self.test_cfg = self.ctx.mm_test_cfg(model_cpu.bbox_head.test_cfg)
        pre_topk = self._pre_topk()
        self.ctx.stage("export")
        from harness.export.loader import export_for_cell

        onnx_path, facts = export_for_cell(self.ctx, model_cpu, pre_topk=pre_topk)
        self.info.facts.update(facts)
        del model_cpu
        self.ctx.stage("build")
        self._refuse(check_graph(onnx_path, self.flavour, "fp32"))  # before calibrating anything
        graph, calibrator = self._precision_graph(onnx_path)
        self._refuse(check_graph(graph, self.flavour, self.cell["precision"],
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
        if c.batch is not None:
            self.cell = {**self.cell, "batch_axis": [c.batch]}  # a fixed-batch graph: a fixed profile
        self.engine_path = self._engine(graph, calibrator)
        return self.engine_path

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
        if precision != "int8":
            return onnx_path, None
        calib = self.ctx.calibration_set()
        c = self.cell["calibration"]
        if self.flavour.has_calibrators and c["method"] in ("entropy", "minmax"):
            from harness.trt.calibrator import make_calibrator

            cache = Path(self.ctx.cache_dir) / "int8" / f"trt10-{c['method']}-{calib.sha256[:16]}.cache"
            cache.parent.mkdir(parents=True, exist_ok=True)
            self.info.facts.update({"calibration_method": c["method"], "calibration_cache": str(cache),
                                    "calibration_data_sha256": calib.sha256,
                                    "calibration_images": calib.images})
            return onnx_path, make_calibrator(self.flavour.module, c["method"], calib.batches, cache,
                                                input_name=self.input_name)
        from harness.calibration.qdq import quantize_qdq

        path, info = quantize_qdq(onnx_path, calib, c["method"], c["percentile"], self.ctx.cache_dir,
                                  input_name=self.input_name)
        self.info.facts.update(info)
        return path, None

    def _engine(self, graph: Path, calibrator) -> Path:
        from harness.measure.provenance import file_hash
        from harness.trt.build import build_engine
        from harness.trt.cache import cached_engine, engine_cache_key, engine_meta

        batches = self.cell.get("batch_axis") or [self.cell["batch"]]
        profile = (min(batches), self.cell["batch"], max(batches))
        gpu, cc = _gpu_identity(self.cell["device"])
        calib_hash = self.info.facts.get("calibration_cache_sha256") or self.info.facts.get(
            "calibration_data_sha256")
        key = engine_cache_key(file_hash(graph), self.cell["precision"], profile, self.flavour.name,
                               self.flavour.version, gpu, cc, calib_hash)
        cache_dir = Path(self.ctx.cache_dir) / "engines"
        engine = cached_engine(cache_dir, key, lambda: build_engine(
            graph, flavour=self.flavour, precision=self.cell["precision"], profile=profile,
            calibrator=calibrator, timing_cache_path=cache_dir / f"timing-{self.flavour.name}.cache",
            input_name=self.input_name))
        meta = engine_meta(engine)
        self.info.facts["engine"] = {k: meta.get(k) for k in (
            "engine_size", "sha256", "build_time_s", "typing", "flags", "profile", "timing_cache",
            "log_path", "warnings")}
        self.info.facts["engine"]["gpu"], self.info.facts["engine"]["compute_capability"] = gpu, cc
        self.info.artifacts["engine"] = str(engine)
        self.info.warnings.extend(meta.get("warnings") or [])
        return engine

    # --------------------------------------------------------------- execute

    def activate(self) -> None:
        why = self._cannot_execute()
        if why:
            e = self.info.facts["engine"]
            raise SkipCell(f"engine built ({self.flavour.label}, {e['engine_size'] / 2**20:.1f} MiB, "
                           f"{e['build_time_s'] or 0:.1f} s) but cannot execute here: {why}")
        import torch

        trt = self.flavour.module
        self.device = torch.device(self.cell["device"])
        torch.cuda.set_device(self.device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

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
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=_torch_dtype(self.engine.get_tensor_dtype(name)),
                              device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        self._bound = (x, outs)  # keep the buffers alive while the context points at them

        def run():
            self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
            return outs
        return run

    def forward(self, inputs):
        return [o.clone() for o in self.bind_forward(inputs)()]

    def graphed_forward(self, inputs):
        """Capture ``execute_async_v3`` in a CUDA graph (after one eager run, as TensorRT requires)."""
        import torch

        run = self.bind_forward(inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
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
        self._bound = self._graph = None


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
