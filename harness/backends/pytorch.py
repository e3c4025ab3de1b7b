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

On CUDA, ``infer`` overlaps batches when the stream offers a look-ahead
(``Prepared.peek``, :class:`harness.models.stream.BatchStream`): it queues the
next batch's model on the main stream before finishing this one, whose NMS
runs on a side stream (after an event on its model outputs) and whose results
come back in one non-blocking copy into pinned memory; that NMS is launched from
a helper thread while this thread queues the next model (both CPU-bound launch
work that overlaps because torch releases the GIL inside each op).  The host's
work on this batch (COCO conversion) then overlaps the device's work on the next.
``load`` runs the model and NMS once at the pass's batch shapes (``warmup_s``
in the facts): CUDA's lazy kernel loading and cuDNN's per-shape heuristics
are paid there, not inside the accuracy pass.  Results are those of the plain
call (tests/test_pytorch_overlap.py).
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
        self._cuda = device.startswith("cuda")
        self._ahead = None  # (Prepared, job) queued by the look-ahead
        self._pool = None  # the NMS helper thread of the overlapped pass (made on first use)
        if self._cuda:
            self._warmup()

    def _warmup(self) -> None:
        """Model + NMS once per batch shape of the pass (full batches and the last, shorter one)."""
        import time

        import numpy as np
        import torch

        t0 = time.perf_counter()
        batch, size = int(self.cell["batch"]), int(self.cell["imgsz"])
        try:
            total = len(self.ctx.dataset.images)
        except AttributeError:  # a context without a dataset (tests, tools)
            total = batch
        shapes = [batch] + ([total % batch] if total % batch and total > batch else [])
        for n in shapes:
            metas = [{"ori_shape": (size, size), "scale_factor": (1.0, 1.0),
                      "pad_param": np.zeros(4, dtype=np.float32)}] * n
            x = torch.zeros((n, 3, size, size), device=self.cell["device"])
            self._finish(self._launch(x, metas))
        torch.cuda.synchronize()
        self.info.facts["warmup_s"] = round(time.perf_counter() - t0, 3)

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

    # ------------------------------------------------------------------ CUDA: overlapped batches
    def infer(self, prepared):
        if not getattr(self, "_cuda", False):
            return super().infer(prepared)
        ahead, self._ahead = self._ahead, None
        job = ahead[1] if ahead is not None and ahead[0] is prepared else \
            self._launch(prepared.inputs, prepared.metas)
        peek = getattr(prepared, "peek", None)
        nxt = peek() if peek is not None else None
        if nxt is None:
            return self._finish(job)
        # This batch's NMS is launched by a helper thread while this thread queues the next
        # batch's model: both are CPU-bound kernel launching (an eager model of small kernels
        # and ~100 small NMS ops), and torch releases the GIL inside each op's dispatch, so
        # the two overlap.  Streams are per thread: the NMS runs on the side stream after the
        # model's event, exactly as when called here; results and errors come back through
        # the future (tests/test_pytorch_overlap.py: equal to the plain path).
        pool = self._pool
        if pool is None:
            from concurrent.futures import ThreadPoolExecutor

            pool = self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detbench-nms")
        finished = pool.submit(self._finish, job)
        try:
            self._ahead = (nxt, self._launch(nxt.inputs, nxt.metas))
        finally:
            dets = finished.result()
        return dets

    def _launch(self, inputs, metas):
        """Queue the model on the current stream; returns what ``_finish`` needs."""
        import torch

        with torch.inference_mode():
            boxes, scores = self._deploy_model()(inputs.to(self.dtype))
        done = torch.cuda.Event()
        done.record()
        return boxes, scores, done, metas

    def _finish(self, job) -> list:
        """NMS on the side stream once the model's outputs are ready; one copy to pinned memory."""
        import torch

        from harness.export.device_nms import batched_postprocess

        boxes, scores, done, metas = job
        if boxes.shape[-1] == 5:  # a rotated head: its own NMS (harness.export.host_nms_rotated)
            done.synchronize()
            return self._rotated(boxes, scores, metas)
        side = getattr(self, "_side", None)
        if side is None or side.device != boxes.device:
            side = self._side = torch.cuda.Stream(device=boxes.device)
        side.wait_event(done)
        # the calling thread's current device too (a helper thread starts on device 0)
        with torch.cuda.device(boxes.device), torch.cuda.stream(side), torch.inference_mode():
            boxes.record_stream(side)
            scores.record_stream(side)
            outs = batched_postprocess(boxes, scores, metas, self.test_cfg)
            host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in outs]
            for h, t in zip(host, outs):
                h.copy_(t, non_blocking=True)
        side.synchronize()
        b, s, l, n = (h.numpy() for h in host)
        return [Detections(b[i, :k], s[i, :k], l[i, :k]) for i, k in enumerate(n.tolist())]

    def postprocess(self, raw, metas):
        import torch

        boxes, scores = raw
        with torch.inference_mode():
            if boxes.shape[-1] == 5:  # a rotated head: rotated NMS on the tensors' device
                return self._rotated(boxes, scores, metas)
            if boxes.is_cuda:
                done = torch.cuda.Event()
                done.record()
                return self._finish((boxes, scores, done, metas))
            from harness.export.host_nms import host_postprocess

            return [Detections(b.numpy(), s.numpy(), l.numpy())
                    for b, s, l in host_postprocess(boxes, scores, metas, self.test_cfg)]

    def _rotated(self, boxes, scores, metas) -> list:
        import torch

        from harness.export.host_nms_rotated import rotated_postprocess

        with torch.inference_mode():
            return [Detections(b.cpu().numpy(), s.cpu().numpy(), l.cpu().numpy())
                    for b, s, l in rotated_postprocess(boxes, scores, metas, self.test_cfg)]

    def decoded(self, prepared):
        boxes, scores = self.forward(prepared.inputs)
        return boxes.float().cpu().numpy(), scores.float().cpu().numpy()

    def close(self) -> None:
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(wait=True)
        self.model = self.head = self._deploy = None
        self._ahead = None
