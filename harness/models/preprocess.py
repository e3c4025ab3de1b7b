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
