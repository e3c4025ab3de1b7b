"""Deterministic synthetic ROTATED detection dataset (DOTA-like), as in issue #19.

``generate(out_dir, images, seed)`` writes

- ``out_dir/images/000000.png ...`` (lossless PNG),
- ``out_dir/annotations.json``: COCO-style, ``info.box_type == "rotated"``,
  ``info.angle_version == "le90"``; each annotation has ``bbox`` (the
  axis-aligned box enclosing the 4 corners, so COCO tools still load it),
  ``segmentation`` ``[[x1, y1, ..., x4, y4]]`` (the rotated box's corners),
  ``rbox`` ``[cx, cy, w, h, angle]`` (angle in radians), ``area`` (= w * h),
  ``iscrowd`` 0, ``difficult`` 0/1 and ``category_id``,
- ``out_dir/labelTxt/<image stem>.txt``: DOTA lines
  ``x1 y1 x2 y2 x3 y3 x4 y4 classname difficult`` (what mmrotate's
  ``DOTADataset`` / mmyolo's ``YOLOv5DOTADataset`` read: ``ann_file='labelTxt/'``,
  ``data_prefix=dict(img_path='images/')``),

and returns the path of the annotation file.  The same arguments give
byte-identical output whatever the number of worker processes: image ``i``
draws from its own ``numpy.random.default_rng([seed, i])`` stream (the
structure of :mod:`harness.data.synth`, whose background, clutter, colour and
texture helpers are reused).

Angle convention: mmrotate ``le90`` (``w >= h``, angle in ``[-pi/2, pi/2)``),
corners in the order of mmrotate 1.0's ``rbox2qbox``: with
``u = (cos a, sin a) * w / 2`` and ``v = (-sin a, cos a) * h / 2`` (image
coordinates, y down), the corners are ``c+u+v, c+u-v, c-u-v, c-u+v``.
Coordinates are continuous with pixel ``(i, j)`` covering ``[i, i+1) x [j, j+1)``
(COCO's convention): a shape covers exactly the pixels whose centres lie in it.

Every shape is elongated (aspect ratio >= 1.5) so that its angle is defined
modulo pi and learnable.  The shape fills or is inscribed in its rotated box:

- ``rectangle``: the box itself (aspect 2.0-3.2);
- ``ellipse``: axes w/2 and h/2 along the box axes (aspect 1.6-2.4);
- ``triangle``: isosceles, apex at the middle of one short side, base on the
  other short side (aspect 1.5-2.5);
- ``diamond``: vertices at the middles of the four sides (aspect 1.8-2.8).

Objects may overlap; later ones are drawn on top.  An object more than
``MAX_OCCLUSION`` hidden is not annotated; one more than ``DIFFICULT_OCCLUSION``
hidden is annotated with ``difficult`` 1 (DOTA-style evaluation ignores it).
Image and annotation ids start at 1.  Heavy imports (numpy, cv2) happen inside
the functions so that importing this module is cheap.
"""
from __future__ import annotations

import json
import math
import pathlib

from harness.data import synth as _synth

CLASSES: tuple[str, ...] = ("rectangle", "ellipse", "triangle", "diamond")
#: aspect ratio (w / h, w the long side) range of each class
ASPECT = {"rectangle": (2.0, 3.2), "ellipse": (1.6, 2.4), "triangle": (1.5, 2.5),
          "diamond": (1.8, 2.8)}
ANGLE_VERSION = "le90"
#: an annotation is dropped when more than this fraction of the shape is hidden
MAX_OCCLUSION = 0.6
#: ... and flagged ``difficult`` when more than this fraction is hidden
DIFFICULT_OCCLUSION = 0.3
#: long-side ranges (pixels) for the small / medium / large buckets (capped at 0.7 * size)
_LONG_SIDE_BUCKETS = ((16.0, 34.0), (38.0, 88.0), (96.0, 170.0))


def generate(out_dir, images: int, seed: int, size: int = 256, max_objects: int = 6,
             clutter: bool = True, workers: int | None = None) -> pathlib.Path:
    """Write ``images`` synthetic images, ``annotations.json`` and ``labelTxt/`` under ``out_dir``.

    Image ``i`` draws from ``numpy.random.default_rng([seed, i])``, so images are
    generated in parallel (``workers`` processes, default: every usable core) and
    the files are byte-identical whatever the worker count.
    """
    if images < 0 or max_objects < 1 or size < 32:
        raise ValueError("need images >= 0, max_objects >= 1 and size >= 32")
    out = pathlib.Path(out_dir)
    img_dir, txt_dir = out / "images", out / "labelTxt"
    img_dir.mkdir(parents=True, exist_ok=True)
    txt_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or _synth._cores(), images or 1))
    args = [(idx, seed, size, max_objects, clutter, str(img_dir)) for idx in range(images)]
    if workers == 1:
        per_image = [_one_image(*a) for a in args]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=_synth.pool_context()) as pool:
            per_image = list(pool.map(_one_image_args, args,
                                      chunksize=max(1, images // (workers * 8))))

    coco_images, coco_anns = [], []
    ann_id = 1
    for idx, (name, anns) in enumerate(per_image):
        image_id = idx + 1
        lines = []
        for a in anns:
            corners = a["corners"]
            xs, ys = corners[0::2], corners[1::2]
            x0, y0 = min(xs), min(ys)
            coco_anns.append({
                "id": ann_id, "image_id": image_id, "category_id": a["cls"] + 1,
                "bbox": [x0, y0, max(xs) - x0, max(ys) - y0],
                "segmentation": [list(corners)],
                "rbox": list(a["rbox"]),
                "area": a["rbox"][2] * a["rbox"][3],
                "iscrowd": 0, "difficult": a["difficult"],
            })
            ann_id += 1
            lines.append(" ".join(f"{v:.3f}" for v in corners)
                         + f" {CLASSES[a['cls']]} {a['difficult']}\n")
        (txt_dir / (pathlib.Path(name).stem + ".txt")).write_text("".join(lines))
        coco_images.append({"id": image_id, "file_name": name, "width": size, "height": size})

    doc = {
        "info": {"description": "detbench synthetic rotated shapes", "version": "1",
                 "box_type": "rotated", "angle_version": ANGLE_VERSION,
                 "seed": int(seed), "images": int(images), "size": int(size),
                 "max_objects": int(max_objects), "clutter": bool(clutter)},
    }
    return _synth.write_annotations(out, doc["info"], coco_images, coco_anns, CLASSES)


def rbox_corners(cx: float, cy: float, w: float, h: float, angle: float) -> list[float]:
    """The 4 corners ``[x1, y1, ..., x4, y4]`` of a rotated box, in mmrotate's ``rbox2qbox`` order."""
    c, s = math.cos(angle), math.sin(angle)
    ux, uy = w / 2 * c, w / 2 * s
    vx, vy = -h / 2 * s, h / 2 * c
    return [cx + ux + vx, cy + uy + vy, cx + ux - vx, cy + uy - vy,
            cx - ux - vx, cy - uy - vy, cx - ux + vx, cy - uy + vy]


def shape_mask(name: str, cx: float, cy: float, w: float, h: float, angle: float, size: int):
    """Bool [size, size] mask of the pixels whose centres lie in the shape inscribed in the box.

    Exact point-in-shape tests in the box's own frame (pixel ``(i, j)`` has its
    centre at ``(i + 0.5, j + 0.5)``): no rasteriser's outline is added, so the
    drawn shape never pokes out of its ground-truth box.
    """
    import numpy as np

    c, s = math.cos(angle), math.sin(angle)
    ex = abs(w / 2 * c) + abs(h / 2 * s)
    ey = abs(w / 2 * s) + abs(h / 2 * c)
    x0, x1 = max(0, int(math.floor(cx - ex)) - 1), min(size, int(math.ceil(cx + ex)) + 1)
    y0, y1 = max(0, int(math.floor(cy - ey)) - 1), min(size, int(math.ceil(cy + ey)) + 1)
    mask = np.zeros((size, size), dtype=bool)
    if x1 <= x0 or y1 <= y0:  # pragma: no cover - boxes are placed inside the image
        return mask
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    p = (dx * c + dy * s) / (w / 2)  # along the long axis, -1..1 inside the box
    q = (-dx * s + dy * c) / (h / 2)  # along the short axis
    if name == "rectangle":
        inside = (np.abs(p) <= 1) & (np.abs(q) <= 1)
    elif name == "ellipse":
        inside = p * p + q * q <= 1
    elif name == "triangle":  # apex at p = +1, base on p = -1 spanning q in [-1, 1]
        inside = (p >= -1) & (np.abs(q) <= (1 - p) / 2)
    elif name == "diamond":
        inside = np.abs(p) + np.abs(q) <= 1
    else:  # pragma: no cover - CLASSES and this function are kept in step
        raise ValueError(name)
    mask[y0:y1, x0:x1] = inside
    return mask


def render(idx: int, seed: int, size: int = 256, max_objects: int = 6, clutter: bool = True):
    """Draw image ``idx``: returns (BGR uint8 canvas, objects).

    Each object is a dict: ``cls`` (index into CLASSES), ``rbox`` (cx, cy, w, h,
    angle; le90), ``corners`` (8 floats), ``mask`` (bool array of the full
    shape), ``visible`` (pixels of it not covered by later objects),
    ``annotated`` and ``difficult``.
    """
    import cv2
    import numpy as np

    cv2.setNumThreads(1)  # the parallelism is across images
    rng = np.random.default_rng([int(seed), int(idx)])
    canvas = _synth._background(rng, size, np, cv2)
    if clutter:
        _synth._clutter(rng, canvas, np, cv2)
    owner = np.full((size, size), -1, dtype=np.int32)
    objects = []
    n = int(rng.integers(1, max_objects + 1))
    for k in range(n):
        cls = int(rng.integers(len(CLASSES)))
        rbox = _draw_rbox(rng, CLASSES[cls], size)
        mask = shape_mask(CLASSES[cls], *rbox, size)
        if not mask.any():  # pragma: no cover - the smallest shape is 16 x 6.4 px
            mask[min(int(rbox[1]), size - 1), min(int(rbox[0]), size - 1)] = True
        colour = _synth._pick_colour(rng, canvas[mask], np)
        ys, xs = np.nonzero(mask)  # row-major, as the yolov8 synth paints
        _synth._paint(rng, canvas, ys, xs, colour, np)
        owner[mask] = k
        objects.append({"cls": cls, "rbox": rbox, "corners": rbox_corners(*rbox), "mask": mask})
    visible = np.bincount(owner[owner >= 0].ravel(), minlength=n)
    for k, obj in enumerate(objects):
        full = int(obj["mask"].sum())
        obj["visible"] = int(visible[k])
        hidden = 1.0 - obj["visible"] / full
        obj["annotated"] = hidden <= MAX_OCCLUSION
        obj["difficult"] = int(hidden > DIFFICULT_OCCLUSION)
    if clutter:
        _synth._noise_on_top(rng, canvas, np)
    return canvas, objects


def _draw_rbox(rng, name: str, size: int) -> tuple[float, float, float, float, float]:
    """Random le90 box (cx, cy, w, h, angle) whose corners lie inside the image."""
    lo, hi = _LONG_SIDE_BUCKETS[int(rng.integers(len(_LONG_SIDE_BUCKETS)))]
    hi = min(hi, 0.7 * size)
    lo = min(lo, hi)
    w = float(rng.uniform(lo, hi))
    h = w / float(rng.uniform(*ASPECT[name]))
    angle = float(rng.uniform(-math.pi / 2, math.pi / 2))  # [-pi/2, pi/2): le90 (w > h)
    ex = abs(w / 2 * math.cos(angle)) + abs(h / 2 * math.sin(angle))
    ey = abs(w / 2 * math.sin(angle)) + abs(h / 2 * math.cos(angle))
    cx = float(rng.uniform(ex + 1.0, size - ex - 1.0))
    cy = float(rng.uniform(ey + 1.0, size - ey - 1.0))
    return (cx, cy, w, h, angle)


def _one_image_args(args):
    return _one_image(*args)


def _one_image(idx: int, seed: int, size: int, max_objects: int, clutter: bool, img_dir: str):
    """Draw, encode and write image ``idx``; returns (file name, [annotation parts])."""
    import cv2

    canvas, objects = render(idx, seed, size, max_objects, clutter)
    anns = [{"cls": o["cls"], "rbox": o["rbox"], "corners": o["corners"],
             "difficult": o["difficult"]} for o in objects if o["annotated"]]
    name = f"{idx:06d}.png"
    ok, buf = cv2.imencode(".png", canvas, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {name}")
    (pathlib.Path(img_dir) / name).write_bytes(buf.tobytes())
    return name, anns
