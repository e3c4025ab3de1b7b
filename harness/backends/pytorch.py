"""The PyTorch reference: mmyolo's own model, head decoding and NMS.

Model time is backbone + neck + head (the raw head outputs); postprocessing is
the head's ``predict_by_feat`` (decode, score threshold, pre-top-k, NMS,
keep-top-k, rescale to the original image), i.e. exactly what mmyolo predicts.
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

    def forward(self, inputs):
        import torch

        with torch.inference_mode():
            return self.head(self.model.extract_feat(inputs.to(self.dtype)))

    def bind_forward(self, inputs):
        x = inputs.to(self.dtype)
        model, head = self.model, self.head
        return lambda: head(model.extract_feat(x))

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
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # cuDNN autotuning and lazy init must happen before capture
                self.head(self.model.extract_feat(static))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            self._graph_outputs = self.head(self.model.extract_feat(static))
        self._graph = graph
        return graph.replay

    def postprocess(self, raw, metas):
        import torch

        raw = tuple([t.float() for t in level] if isinstance(level, (list, tuple)) else level
                    for level in raw)
        with torch.inference_mode():
            results = self.head.predict_by_feat(*raw, batch_img_metas=metas, cfg=self.test_cfg,
                                                rescale=True)
        return [Detections(r.bboxes.cpu().numpy(), r.scores.cpu().numpy(), r.labels.cpu().numpy())
                for r in results]

    def decoded(self, prepared):
        import torch

        from harness.export.deploy import DeployModel

        if getattr(self, "_deploy", None) is None:
            self._deploy = DeployModel(self.model, nms="none").eval()
        with torch.inference_mode():
            boxes, scores = self._deploy(prepared.inputs.to(self.dtype))
        return boxes.float().cpu().numpy(), scores.float().cpu().numpy()

    def close(self) -> None:
        self.model = self.head = self._deploy = None
