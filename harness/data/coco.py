"""COCO-format datasets: an image directory plus an instances JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError


@dataclass(frozen=True)
class CocoImage:
    id: int
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class CocoDataset:
    """The images to run and the category ids that model labels map onto (sorted by id)."""

    ann_file: Path
    images: tuple[CocoImage, ...]
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]

    @classmethod
    def load(cls, images_dir: str | Path, ann_file: str | Path, limit: int | None = None,
             where: str = "dataset") -> "CocoDataset":
        images_dir, ann_file = Path(images_dir), Path(ann_file)
        if not ann_file.is_file():
            raise UserError(f"{where}.annotations: '{ann_file}' does not exist")
        if not images_dir.is_dir():
            raise UserError(f"{where}.images: '{images_dir}' is not a directory")
        try:
            data = json.loads(ann_file.read_text())
            entries = sorted(data["images"], key=lambda im: im["id"])
            cats = sorted(data["categories"], key=lambda c: c["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{where}.annotations: '{ann_file}' is not a COCO instances file "
                            f"({exc})") from exc
        if limit is not None:
            entries = entries[:limit]
        images = tuple(CocoImage(int(e["id"]), images_dir / e["file_name"], int(e["width"]),
                                 int(e["height"])) for e in entries)
        missing = [im.path for im in images if not im.path.is_file()]
        if missing:
            raise UserError(f"{where}: {len(missing)} image files listed in '{ann_file}' are "
                            f"missing, e.g. '{missing[0]}'")
        if not images:
            raise UserError(f"{where}: '{ann_file}' lists no images")
        return cls(ann_file, images, tuple(c["id"] for c in cats), tuple(c["name"] for c in cats))

    def read(self, image: CocoImage):
        """The image as a BGR uint8 array, as mmcv and cv2 read it."""
        import cv2

        arr = cv2.imread(str(image.path), cv2.IMREAD_COLOR)
        if arr is None:
            raise UserError(f"image '{image.path}' could not be decoded")
        return arr
