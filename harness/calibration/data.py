"""The calibration image set: chosen in the matrix, never the evaluation images.

Default: a synthetic split generated with the calibration seed (the evaluation
split uses another seed), or for a COCO dataset the images after the
evaluation ``limit``, or an explicit ``calibration.source`` dataset.  Images
go through the same preprocessing as inference, so scales match what the
deployed model sees.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError


@dataclass(frozen=True)
class CalibrationSet:
    batches: list  # numpy arrays (n, 3, H, W) (float32, or the ONNX model's input dtype/layout), preprocessed exactly like inference
    sha256: str  # of the preprocessed tensors: identifies the data in caches and provenance
    images: int
    source: str


def source_paths(src: dict, cache_dir: Path) -> tuple[str, str]:
    """(images folder, annotations file) of a dataset spec: a synthetic one is generated (cached)."""
    if src.get("synth"):
        from harness.data.datasets import synth_dataset

        synth = src["synth"]
        return synth_dataset(synth["images"], synth["seed"], synth["size"], cache_dir)
    return src["images"], src["annotations"]


def calibration_images(cell: dict, cache_dir: Path) -> tuple[list[Path], str]:
    """The image files to calibrate on, and a description of where they came from."""
    from harness.data.coco import CocoDataset
    from harness.data.datasets import synth_dataset

    calib, ds = cell["calibration"], cell["dataset"]
    if calib.get("source"):
        images_dir, ann = source_paths(calib["source"], cache_dir)
        found = CocoDataset.load(images_dir, ann, calib["images"], where="calibration.source")
        return [im.path for im in found.images], f"calibration.source {ann}"
    if ds.get("synth"):
        if calib["seed"] == ds["synth"]["seed"]:
            raise UserError(f"calibration.seed {calib['seed']} equals the evaluation dataset's seed: "
                            "calibrating on the evaluation images inflates int8 accuracy; pick another seed")
        images_dir, ann = synth_dataset(calib["images"], calib["seed"], ds["synth"]["size"], cache_dir)
        return sorted(Path(images_dir).glob("*.png"))[:calib["images"]], f"synth seed {calib['seed']}"
    full = CocoDataset.load(ds["images"], ds["annotations"], None)
    held_out = full.images[ds.get("limit") or len(full.images):][:calib["images"]]
    if not held_out:
        raise UserError("calibration: the dataset has no images beyond the evaluation `limit`; set "
                        "`calibration.source` to a dataset that is not the evaluation split")
    return [im.path for im in held_out], f"{ds['annotations']} images after limit {ds.get('limit')}"


def build_calibration_set(files: list[Path], pre, batch: int, source: str) -> CalibrationSet:
    """Read and preprocess the calibration images; refuses an empty or unreadable set."""
    import cv2
    import numpy as np

    if not files:
        raise UserError(f"calibration set from {source} is empty: give `calibration.images` > 0 and "
                        "a source with images")
    arrays = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"calibration image '{f}' could not be read (missing or not an image)")
        arrays.append(img)
    batches, digest = [], hashlib.sha256()
    for start in range(0, len(arrays), batch):
        chunk = arrays[start:start + batch]
        x = pre(chunk, list(range(start, start + len(chunk)))).inputs.cpu().numpy()
        if x.dtype not in (np.uint8, np.float16):  # a user's ONNX model may take uint8 or fp16 input
            x = x.astype(np.float32)
        digest.update(x.tobytes())
        batches.append(x)
    return CalibrationSet(batches, digest.hexdigest(), len(arrays), source)
