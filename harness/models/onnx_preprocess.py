"""Preprocessing of an ONNX model's contract, on the host (numpy + cv2, no mmyolo).

Produces the same :class:`~harness.models.preprocess.Prepared` batches and the
same per-image geometry (``ori_shape``, ``img_shape``, ``scale_factor`` (w, h),
``pad_param`` (top, bottom, left, right)) as the mmyolo pipeline, so boxes map
back to original pixels with the same code.  ``letterbox`` reproduces mmyolo's
``YOLOv5KeepRatioResize`` + ``LetterResize`` (area interpolation when
shrinking, centred padding), ``stretch`` resizes to the input size ignoring
the aspect ratio, ``keep_ratio`` scales to fit and fills the bottom/right with
the pad value (the image at the top-left, YOLOX/PaddleDetection style).
"""
from __future__ import annotations

from harness.models.preprocess import Prepared


class OnnxPreprocessor:
    """The same interface as :class:`harness.models.preprocess.Preprocessor`: ``prepare_one``
    (geometry + colour order on the host, uint8 CHW — what the input cache keeps), ``collate``
    (dtype, scale/mean/std and layout on the batch, on whatever device it is) and
    ``pipeline_hash`` (the input cache's key), so the streaming accuracy pass serves both."""

    #: bump when the preprocessing code changes what it produces
    VERSION = 1

    def __init__(self, contract, imgsz: int, device: str = "cpu"):
        self.c = contract
        self.height, self.width = contract.input_hw(imgsz)
        self.device = device

    def __call__(self, images: list, image_ids: list[int]) -> Prepared:
        import numpy as np
        import torch

        arrays, metas = zip(*(self.prepare_one(img, i) for img, i in zip(images, image_ids)))
        x = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))
        if self.device != "cpu":
            x = x.to(self.device)
        return self.collate(x, list(metas), list(image_ids))

    def prepare_one(self, img, image_id: int) -> tuple:
        """One BGR uint8 image -> (uint8 CHW array in the declared colour order, geometry)."""
        import numpy as np

        out, meta = self._geometry(img)
        if self.c.color == "RGB":
            out = out[..., ::-1]
        meta["img_id"] = image_id
        return np.ascontiguousarray(out.transpose(2, 0, 1)), meta

    def collate(self, inputs, metas: list[dict], image_ids: list[int]) -> Prepared:
        """A stacked uint8 ``(N, 3, H, W)`` tensor (or a list of them) -> the graph's input."""
        import torch

        c = self.c
        x = torch.stack(list(inputs)) if isinstance(inputs, (list, tuple)) else inputs
        if c.dtype != "uint8":
            mean = torch.tensor(c.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(c.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
            x = (x.float() * torch.tensor(c.scale, dtype=torch.float32) - mean) / std
            if c.dtype == "float16":
                x = x.half()
        if c.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return Prepared(x.contiguous(), metas, list(image_ids))

    def pipeline_hash(self) -> str:
        """Content key of this preprocessing (what ``prepare_one`` produces) for the input cache."""
        import hashlib
        import json

        import cv2
        import numpy as np

        c = self.c
        key = {"v": self.VERSION, "hw": [self.height, self.width], "resize": c.resize,
               "pad_value": c.pad_value, "color": c.color, "cv2": cv2.__version__,
               "numpy": np.__version__}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def _geometry(self, img):
        """Resize / pad as declared: (uint8 H x W x 3 BGR image, geometry)."""
        import cv2
        import numpy as np

        c, H, W = self.c, self.height, self.width
        h, w = img.shape[:2]
        pad = [0, 0, 0, 0]
        if c.resize == "stretch":
            sx, sy = W / w, H / h
            out = img if (w, h) == (W, H) else cv2.resize(img, (W, H), interpolation=_interp(min(sx, sy)))
        else:
            r = min(H / h, W / w)
            nw, nh = int(w * r + 0.5), int(h * r + 0.5)
            resized = img if (nw, nh) == (w, h) else cv2.resize(img, (nw, nh), interpolation=_interp(r))
            sx, sy = nw / w, nh / h
            ph, pw = H - nh, W - nw
            if c.resize == "letterbox":
                top, left = int(round(ph // 2 - 0.1)), int(round(pw // 2 - 0.1))
            else:
                top, left = 0, 0
            pad = [top, ph - top, left, pw - left]
            out = cv2.copyMakeBorder(resized, pad[0], pad[1], pad[2], pad[3], cv2.BORDER_CONSTANT,
                                     value=(c.pad_value,) * 3) if any(pad) else resized
        meta = {"ori_shape": (h, w), "img_shape": (H, W), "scale_factor": (sx, sy),
                "pad_param": np.asarray(pad, dtype=np.float32)}
        return out, meta


def _interp(ratio: float) -> int:
    import cv2

    return cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
