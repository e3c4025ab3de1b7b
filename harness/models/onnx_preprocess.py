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
    def __init__(self, contract, imgsz: int, device: str = "cpu"):
        self.c = contract
        self.height, self.width = contract.input_hw(imgsz)
        self.device = device

    def __call__(self, images: list, image_ids: list[int]) -> Prepared:
        import numpy as np
        import torch

        arrays, metas = [], []
        for img, image_id in zip(images, image_ids):
            arr, meta = self.one(img)
            meta["img_id"] = image_id
            arrays.append(arr)
            metas.append(meta)
        x = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))
        if self.device != "cpu":
            x = x.to(self.device)
        return Prepared(x, metas, list(image_ids))

    def one(self, img):
        """One BGR uint8 image -> (input array in the graph's layout and dtype, geometry)."""
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
        if c.color == "RGB":
            out = out[..., ::-1]
        if c.dtype == "uint8":
            x = np.ascontiguousarray(out, dtype=np.uint8)
        else:
            x = (out.astype(np.float32) * np.float32(c.scale) - np.asarray(c.mean, np.float32)) / np.asarray(
                c.std, np.float32)
            x = x.astype(np.float16 if c.dtype == "float16" else np.float32)
        if c.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        meta = {"ori_shape": (h, w), "img_shape": (H, W), "scale_factor": (sx, sy),
                "pad_param": np.asarray(pad, dtype=np.float32)}
        return x, meta


def _interp(ratio: float) -> int:
    import cv2

    return cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
