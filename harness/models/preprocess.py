"""Backend-neutral preprocessing: the model config's own test pipeline.

Every backend receives the same normalised NCHW tensor produced here, so any
difference between backends comes from the backend, never from preprocessing.
The metadata kept per image (original shape, scale factor, letterbox padding)
is what maps boxes back to original image coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prepared:
    """One preprocessed batch: the input tensor and each image's geometry."""

    inputs: Any  # torch.Tensor, N x 3 x H x W, normalised float32 on the target device
    metas: list[dict] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    # set by a streaming pass: a call returning the next batch (collated now) or None at the
    # end, so a runner can queue the next batch's device work before finishing this one
    peek: Any = field(default=None, repr=False, compare=False)


class Preprocessor:
    """Runs the config's test pipeline (minus file loading and annotations) and its data preprocessor."""

    def __init__(self, cfg, device: str = "cpu"):
        from mmcv.transforms import Compose
        from mmyolo.registry import MODELS as MM_MODELS

        steps = []
        for step in cfg.detbench_test_pipeline:
            kind = step["type"]
            if kind.endswith("LoadImageFromFile"):
                step = dict(type="mmdet.LoadImageFromNDArray")
            elif kind.endswith("LoadAnnotations"):
                continue
            steps.append(step)
        self.pipeline = Compose(steps)
        dp_cfg = dict(cfg.model.data_preprocessor)
        dp_cfg.pop("batch_augments", None)  # training-time only
        self._steps, self._dp_cfg = [dict(s) for s in steps], dict(dp_cfg)
        self.data_preprocessor = MM_MODELS.build(dp_cfg).to(device)
        self.device = device

    def __call__(self, images: list, image_ids: list[int]) -> Prepared:
        """Preprocess BGR uint8 arrays (as cv2 reads them) into one batch."""
        packed = [self.pipeline(dict(img=img, img_id=i, img_path=str(i)))
                  for img, i in zip(images, image_ids)]
        data = {"inputs": [p["inputs"] for p in packed],
                "data_samples": [p["data_samples"] for p in packed]}
        out = self.data_preprocessor(data, training=False)
        metas = [ds.metainfo for ds in out["data_samples"]]
        return Prepared(out["inputs"], metas, list(image_ids))

    # ------------------------------------------------------------------ streaming
    # The streaming pass splits __call__ in two: the per-image test pipeline
    # (host, thread-safe, run by decode workers; its uint8 output is what the
    # input cache keeps) and the batch step (data preprocessor on the device).
    # tests/test_stream.py proves the two halves give exactly __call__'s tensors.

    def prepare_one(self, img, image_id: int) -> tuple:
        """One image through the test pipeline: ``(uint8 CHW numpy array, metainfo dict)``."""
        packed = self.pipeline(dict(img=img, img_id=image_id, img_path=str(image_id)))
        return packed["inputs"].numpy(), dict(packed["data_samples"].metainfo)

    def collate(self, inputs, metas: list[dict], image_ids: list[int]) -> Prepared:
        """The data preprocessor on a stacked ``(N, 3, H, W)`` uint8 tensor (any device) or a list."""
        fast = self._collate_tensor(inputs, metas)
        if fast is not None:
            return Prepared(fast[0], fast[1], list(image_ids))
        return self._collate_mm(inputs, metas, image_ids)

    def _collate_tensor(self, inputs, metas: list[dict]):
        """mmdet's ``DetDataPreprocessor.forward(training=False)`` on a stacked tensor, without
        building a ``DetDataSample`` per image (3.6 ms of Python per batch of 32 on the H200
        pass, the consumer thread's second cost after the model): the same tensor operations
        in the same order (``cast_data``, channel flip, ``float()``, ``(x - mean) / std``, the
        divisor pad) and the same two metainfo keys.  Only for the two preprocessor classes
        whose inference path is exactly that (mmdet's ``DetDataPreprocessor`` and mmyolo's
        ``YOLOv5DetDataPreprocessor``, which defers to it when not training); None otherwise
        (the caller then runs mmdet's own).  tests/test_stream.py compares it with mmdet's."""
        import math

        import torch
        import torch.nn.functional as F

        dp = self.data_preprocessor
        if type(dp) not in _tensor_collatable() or not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            return None
        x = inputs.to(dp.device, non_blocking=dp._non_blocking)  # BaseDataPreprocessor.cast_data
        if dp._channel_conversion:
            x = x[:, [2, 1, 0], ...]
        x = x.float()
        if dp._enable_normalize:
            x = (x - dp.mean) / dp.std
        div = dp.pad_size_divisor
        h, w = x.shape[2:]
        pad_h, pad_w = math.ceil(h / div) * div - h, math.ceil(w / div) * div - w
        x = F.pad(x, (0, pad_w, 0, pad_h), "constant", dp.pad_value)
        # DetDataPreprocessor._get_pad_shape (default_collate branch) and batch_input_shape
        pad_shape = (int(math.ceil(inputs.shape[2] / div)) * div, int(math.ceil(inputs.shape[3] / div)) * div)
        batch_input_shape = tuple(x[0].size()[-2:])
        return x, [{**m, "batch_input_shape": batch_input_shape, "pad_shape": pad_shape} for m in metas]

    def _collate_mm(self, inputs, metas: list[dict], image_ids: list[int]) -> Prepared:
        """The data preprocessor itself, one ``DetDataSample`` per image (the reference path)."""
        from mmdet.structures import DetDataSample

        samples = [DetDataSample(metainfo=m) for m in metas]
        out = self.data_preprocessor({"inputs": inputs, "data_samples": samples}, training=False)
        return Prepared(out["inputs"], [ds.metainfo for ds in out["data_samples"]], list(image_ids))

    def pipeline_hash(self) -> str:
        """Content key of this preprocessing: the test pipeline and data preprocessor settings."""
        import hashlib
        import json

        from harness.measure.provenance import package_versions

        versions = {k: v for k, v in package_versions().items() if k in
                    ("mmcv-lite", "mmcv", "mmdet", "mmyolo", "opencv-python", "numpy")}
        text = json.dumps([self._steps, self._dp_cfg, versions], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def _tensor_collatable() -> tuple:
    from mmdet.models.data_preprocessors import DetDataPreprocessor
    from mmyolo.models.data_preprocessors import YOLOv5DetDataPreprocessor

    return DetDataPreprocessor, YOLOv5DetDataPreprocessor
