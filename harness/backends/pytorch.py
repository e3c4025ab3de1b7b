"""The PyTorch reference: mmyolo's own model, its decoding and NMS.

Model time is the timed region every backend shares (``harness.measure.timing.
MODEL_REGION``): input tensor on the device -> decoded boxes + scores, here
backbone + neck + head + detbench's ``DeployModel`` decode (tested equal to the
tensors inside mmyolo's ``predict_by_feat``), the same graph boundary as the
exported ONNX/TensorRT graphs.  Postprocessing is mmyolo's score threshold,
pre-top-k, NMS, keep-top-k and rescale (tested equal to ``predict_by_feat``):
batched on the GPU for CUDA cells (``harness.export.device_nms``), image by
image with mmdet/mmcv's helpers on CPU (``harness.export.host_nms``).  A rotated
head (RTMDet-R) decodes to (cx, cy, w, h, angle) boxes and gets rotated NMS
(``harness.export.host_nms_rotated``) on the tensors' device; its detections
carry ``(K, 5)`` boxes in original-image pixels.
"""
from __future__ import annotations

from harness.backends.base import Detections, Runner, SkipCell

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class PyTorchRunner(Runner):
    def load(self) -> None:
        import torch

        device = self.cell["device"]
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SkipCell("CUDA is not available on this machine (torch.cuda.is_available() is False)")
        precision = self.cell["precision"]
        if precision == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            raise SkipCell("this GPU does not support bf16")
        self.dtype = getattr(torch, _DTYPES[precision])
        self.model = self.ctx.build_model(device).to(self.dtype)
        self.head = self.model.bbox_head
        self.test_cfg = self.ctx.mm_test_cfg(self.head.test_cfg)
        self.info.facts.update({"dtype": str(self.dtype), "device": device})

    def _deploy_model(self):
        from harness.export.deploy import DeployModel

        if getattr(self, "_deploy", None) is None:
            self._deploy = DeployModel(self.model, nms="none").eval()
        return self._deploy

    def forward(self, inputs):
        import torch

        with torch.inference_mode():
            return self._deploy_model()(inputs.to(self.dtype))

    def bind_forward(self, inputs):
        x = inputs.to(self.dtype)
        deploy = self._deploy_model()
        return lambda: deploy(x)

    def timing_context(self):
        import torch

        return torch.inference_mode()

    def graphed_forward(self, inputs):
        """A CUDA-graph replay of ``forward`` on a static copy of ``inputs`` (None on CPU).

        Graph capture removes per-kernel launch gaps, which dominate small models
        at batch 1; comparing graphed and eager time shows how launch-bound a cell is.
        """
        import torch

        if not self.cell["device"].startswith("cuda"):
            return None
        static = inputs.to(self.dtype).clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        deploy = self._deploy_model()
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # cuDNN autotuning and lazy init must happen before capture
                deploy(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            self._graph_outputs = deploy(static)
        self._graph = graph
        return graph.replay

    def postprocess(self, raw, metas):
        import torch

        boxes, scores = raw
        with torch.inference_mode():
            if boxes.shape[-1] == 5:  # a rotated head: rotated NMS on the tensors' device
                from harness.export.host_nms_rotated import rotated_postprocess

                return [Detections(b.cpu().numpy(), s.cpu().numpy(), l.cpu().numpy())
                        for b, s, l in rotated_postprocess(boxes, scores, metas, self.test_cfg)]
            if boxes.is_cuda:
                from harness.export.device_nms import batched_postprocess

                b, s, l, n = batched_postprocess(boxes, scores, metas, self.test_cfg)
                b, s, l, n = b.cpu().numpy(), s.cpu().numpy(), l.cpu().numpy(), n.tolist()
                return [Detections(b[i, :k], s[i, :k], l[i, :k]) for i, k in enumerate(n)]
            from harness.export.host_nms import host_postprocess

            return [Detections(b.numpy(), s.numpy(), l.numpy())
                    for b, s, l in host_postprocess(boxes, scores, metas, self.test_cfg)]

    def decoded(self, prepared):
        boxes, scores = self.forward(prepared.inputs)
        return boxes.float().cpu().numpy(), scores.float().cpu().numpy()

    def close(self) -> None:
        self.model = self.head = self._deploy = None
