"""ONNX Runtime: CPU always, CUDA and TensorRT execution providers when present.

The graph is detbench's own export (decode, optionally in-graph NMS); fp16 is a
converted graph with fp32 I/O, int8 a calibrated Q/DQ graph (TensorRT-style
symmetric settings, so the same file would serve TensorRT 11).  On CUDA the
session runs on torch's current stream through I/O binding, so CUDA events
recorded around ``forward`` bracket exactly ONNX Runtime's GPU work.
"""
from __future__ import annotations

from harness.backends.base import Detections, Runner, SkipCell
from harness.backends.nms_outputs import decode_nms_outputs

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class OnnxRuntimeRunner(Runner):
    def load(self) -> None:
        import onnxruntime as ort

        device = self.cell["device"]
        self.kind = device.split(":")[0]
        if self.kind == "cuda":
            _preload_cuda(ort)
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SkipCell("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu); "
                               f"available: {ort.get_available_providers()}")
        self.input_name, self.source = "images", None
        if getattr(self.ctx, "is_onnx_source", False):  # stand-in contexts in tests lack it
            return self._load_onnx_source(ort)
        model_cpu = self.ctx.build_model("cpu")
        self.ctx.stage("export")
        from harness.export.loader import export_for_cell

        onnx_path, facts = export_for_cell(self.ctx, model_cpu)
        self.test_cfg = self.ctx.mm_test_cfg(model_cpu.bbox_head.test_cfg)
        del model_cpu
        self.ctx.stage("build")
        onnx_path, precision_facts = self._precision_graph(onnx_path)
        self.session = ort.InferenceSession(str(onnx_path), self._session_options(ort),
                                            providers=self._providers())
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.info.facts.update({**facts, **precision_facts, "onnxruntime": ort.__version__,
                                "providers": self.session.get_providers(),
                                "provider_options": _jsonable(self.session.get_provider_options()),
                                "model_file": str(onnx_path)})
        self.info.artifacts["onnx"] = str(onnx_path)

    def _load_onnx_source(self, ort) -> None:
        """A user's ONNX file (``onnx:`` model): used as given, its contract applied around it."""
        from harness.backends.onnx_model import OnnxModel

        self.source = OnnxModel(self.ctx, self.info)
        self.source.load()
        self.input_name = self.source.contract.input_name
        self.ctx.stage("build")
        onnx_path, precision_facts = self.source.precision_graph()
        self.session = ort.InferenceSession(str(onnx_path), self._session_options(ort),
                                            providers=self._providers())
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.info.facts.update({**precision_facts, "onnxruntime": ort.__version__,
                                "providers": self.session.get_providers(),
                                "provider_options": _jsonable(self.session.get_provider_options()),
                                "model_file": str(onnx_path)})
        self.info.artifacts["onnx"] = str(onnx_path)

    def _precision_graph(self, onnx_path):
        precision = self.cell["precision"]
        if precision == "fp16":
            from harness.export.fp16 import to_fp16

            return to_fp16(onnx_path, self.ctx.cache_dir)
        if precision in ("int8", "int8-mixed"):
            from harness.calibration.sensitivity import int8_graph

            path, info = int8_graph(self.ctx, onnx_path, self.test_cfg)
            self.info.warnings.extend(self.ctx.same_scales_warning(info))
            self.info.warnings.extend(_mix_warning(info))
            return path, info
        return onnx_path, {}

    def _session_options(self, ort):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return opts

    def _providers(self):
        if self.kind != "cuda":
            return ["CPUExecutionProvider"]
        import torch

        self.device_index = torch.device(self.cell["device"]).index or 0
        torch.cuda.set_device(self.device_index)
        self.stream = torch.cuda.current_stream()
        return [("CUDAExecutionProvider", {"device_id": self.device_index,
                                           "user_compute_stream": str(self.stream.cuda_stream)}),
                "CPUExecutionProvider"]

    def forward(self, inputs):
        if self.kind == "cuda":
            return self.bind_forward(inputs)()
        return self.session.run(self.output_names, {self.input_name: inputs.cpu().numpy()})

    def bind_forward(self, inputs):
        if self.kind != "cuda":
            x = inputs.cpu().numpy()
            return lambda: self.session.run(self.output_names, {self.input_name: x})
        import numpy as np

        x = inputs.to(f"cuda:{self.device_index}", dtype=inputs.dtype).contiguous()
        binding = self.session.io_binding()
        np_dtype = {"torch.float32": np.float32, "torch.float16": np.float16, "torch.uint8": np.uint8}[str(x.dtype)]
        binding.bind_input(self.input_name, "cuda", self.device_index, np_dtype, list(x.shape), x.data_ptr())
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_index)

        def run():
            self.session.run_with_iobinding(binding)
            return binding

        run.keepalive = x  # the bound buffer must outlive the binding
        return run

    def postprocess(self, raw, metas):
        outputs = raw.copy_outputs_to_cpu() if hasattr(raw, "copy_outputs_to_cpu") else raw
        if self.source is not None:
            return self.source.postprocess(self.output_names, outputs, metas)
        if self.cell["nms"] == "none":
            from harness.export.host_nms import host_postprocess

            boxes, scores = outputs
            return [Detections(b.numpy(), s.numpy(), l.numpy())
                    for b, s, l in host_postprocess(boxes, scores, metas, self.test_cfg)]
        return decode_nms_outputs(outputs, metas)

    def decoded(self, prepared):
        if self.source is not None:
            raw = self.forward(prepared.inputs)
            outs = raw.copy_outputs_to_cpu() if hasattr(raw, "copy_outputs_to_cpu") else raw
            return self.source.decoded(self.output_names, outs)
        if self.cell["nms"] != "none":
            return None
        raw = self.forward(prepared.inputs)
        boxes, scores = raw.copy_outputs_to_cpu() if hasattr(raw, "copy_outputs_to_cpu") else raw
        return boxes.astype("float32"), scores.astype("float32")

    def close(self) -> None:
        self.session = None


def _preload_cuda(ort) -> None:
    """Make CUDA/cuDNN visible to onnxruntime-gpu without breaking torch in the same process.

    torch is initialised first so that its own cuDNN is the one loaded (ONNX
    Runtime then reuses it by soname); ``preload_dlls()`` only runs where torch
    has no CUDA, since a second, older cuDNN loaded first makes torch refuse
    to run ("cuDNN version incompatibility").
    """
    import torch

    if torch.cuda.is_available():
        torch.cuda.init()
        torch.backends.cudnn.version()
        return
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # a missing library shows up as a missing provider below
            pass


def _mix_warning(info: dict) -> list[str]:
    mix = info.get("int8_mixed")
    return [mix["note"]] if mix and mix["met"] is False else []  # None: a given mix, no budget


def _jsonable(obj):
    import json

    return json.loads(json.dumps(obj, default=str))
