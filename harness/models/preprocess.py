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
