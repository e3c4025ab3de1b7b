"""Deterministic synthetic COCO-format detection dataset.

``generate(out_dir, images, seed)`` writes ``out_dir/images/000000.png ...``
(lossless PNG) and ``out_dir/annotations.json`` (COCO instances) and returns the
path of the annotation file.  The same arguments give byte-identical output,
whatever the number of worker processes: image ``i``'s randomness comes from
its own ``numpy.random.default_rng([seed, i])`` stream.

Each image has a textured, noisy background, optional unannotated clutter
(lines, thin elongated blobs, polylines) drawn *under* the objects, and
1..max_objects shapes of random colour and size.  Sizes are drawn per object
from one of three buckets so that COCO small (< 32^2), medium and large
(> 96^2) areas all occur.  Objects may overlap; later ones are drawn on top.
An annotation keeps the bbox of the full shape, but is dropped when more than
``MAX_OCCLUSION`` of the shape is hidden.  ``area`` is the visible pixel count
(as COCO's area is the area of the visible segmentation).

``file_name`` in the annotation file is relative to ``out_dir/images/`` (use
``data_prefix=dict(img='images/')`` in mmdet/mmyolo configs).  Image and
annotation ids start at 1.  Heavy imports (numpy, cv2) happen inside
:func:`generate` so that importing this module is cheap.
"""
from __future__ import annotations

import json
import pathlib
import threading

CLASSES: tuple[str, ...] = ("circle", "square", "triangle")

#: an annotation is dropped when more than this fraction of the shape is hidden
MAX_OCCLUSION = 0.6
#: shape side length ranges (pixels) for the small / medium / large buckets
_SIZE_BUCKETS = ((8.0, 28.0), (38.0, 88.0), (112.0, 190.0))
#: minimum L2 RGB distance between an object colour and the background under it
_MIN_CONTRAST = 70.0


def generate(out_dir, images: int, seed: int, size: int = 320, max_objects: int = 6,
             clutter: bool = True, workers: int | None = None) -> pathlib.Path:
    """Write ``images`` synthetic images and their COCO annotations under ``out_dir``.

    Image ``i`` draws from its own stream, ``numpy.random.default_rng([seed, i])``,
    so images are generated in parallel (``workers`` processes, default: every
    usable core) and the files are byte-identical whatever the worker count.
    """
    if images < 0 or max_objects < 1 or size < 16:
        raise ValueError("need images >= 0, max_objects >= 1 and size >= 16")
    out = pathlib.Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or _cores(), images or 1))
    args = [(idx, seed, size, max_objects, clutter, str(img_dir)) for idx in range(images)]
    if workers == 1:
        per_image = [_one_image(*a) for a in args]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
            per_image = list(pool.map(_one_image_args, args, chunksize=max(1, images // (workers * 8))))

    coco_images, coco_anns = [], []
    ann_id = 1
    for idx, (name, anns) in enumerate(per_image):
        image_id = idx + 1
        for cls, vis, bbox in anns:
            coco_anns.append({
                "id": ann_id, "image_id": image_id, "category_id": cls + 1,
                "bbox": [float(v) for v in bbox], "area": float(vis), "iscrowd": 0,
            })
            ann_id += 1
        coco_images.append({"id": image_id, "file_name": name, "width": size, "height": size})

    doc = {
        "info": {"description": "detbench synthetic shapes", "version": "2",
                 "seed": int(seed), "images": int(images), "size": int(size),
                 "max_objects": int(max_objects), "clutter": bool(clutter)},
    }
    return write_annotations(out, doc["info"], coco_images, coco_anns, CLASSES)


def write_annotations(out, info: dict, images: list, annotations: list, classes) -> pathlib.Path:
    """``out/annotations.json`` of a synthetic set (both generators), written atomically."""
    from harness.fileio import atomic_write

    doc = {"info": info, "images": images, "annotations": annotations,
           "categories": [{"id": i + 1, "name": c, "supercategory": "shape"}
                          for i, c in enumerate(classes)]}
    path = pathlib.Path(out) / "annotations.json"
    atomic_write(path, (json.dumps(doc, separators=(",", ":")) + "\n").encode())
    return path


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def pool_context():
    """Start method of the generators' worker pools: forkserver (spawn where it is absent).

    Never plain fork: a parent that has used OpenCV's thread pool (the stream's letterbox, a test
    process) leaves its lock state in a forked child, whose ``cv2.setNumThreads(1)`` then
    deadlocks.  Workers import only this module (numpy, cv2), so the start costs well under a
    second, and the files do not depend on the start method (per-image random streams).
    """
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _one_image_args(args):
    return _one_image(*args)


def _one_image(idx: int, seed: int, size: int, max_objects: int, clutter: bool, img_dir: str):
    """Draw, encode and write image ``idx``; returns (file name, [(class, visible area, bbox)])."""
    import cv2
    import numpy as np

    cv2.setNumThreads(1)  # the parallelism is across images
    rng = np.random.default_rng([int(seed), int(idx)])
    canvas = _background(rng, size, np, cv2)
    if clutter:
        _clutter(rng, canvas, np, cv2)
    owner = np.full((size, size), -1, dtype=np.int32)  # index of the top object per pixel
    shapes = []
    n = int(rng.integers(1, max_objects + 1))
    for k in range(n):
        cls = int(rng.integers(len(CLASSES)))
        ys, xs = _shape_pixels(rng, CLASSES[cls], size, np, cv2)  # row-major, as a boolean mask's
        colour = _pick_colour(rng, canvas[ys, xs], np)
        _paint(rng, canvas, ys, xs, colour, np)
        owner[ys, xs] = k
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
        shapes.append((cls, len(ys), (x0, y0, x1 - x0 + 1, y1 - y0 + 1)))
    visible = np.bincount(owner[owner >= 0].ravel(), minlength=n)
    anns = [(cls, int(visible[k]), bbox) for k, (cls, full_area, bbox) in enumerate(shapes)
            if int(visible[k]) >= (1.0 - MAX_OCCLUSION) * full_area]
    if clutter:
        _noise_on_top(rng, canvas, np)
    name = f"{idx:06d}.png"
    ok, buf = cv2.imencode(".png", canvas, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {name}")
    with open(pathlib.Path(img_dir) / name, "wb") as f:
        f.write(buf)
    return name, anns


# Speed (issue #12) without changing one output byte: the arithmetic below is the original
# element for element (same operands, same order, same dtypes), done in place to save
# allocations and passes; ``normal(0, s, n)`` is drawn as ``standard_normal(n) * s``, which is
# the same stream and the same values (numpy computes ``0 + s * z``).  tests/test_synth.py
# pins the bytes of a few images.

_SCRATCH = threading.local()


def _scratch(name: str, shape, np):
    """A float64 work array kept for this thread's next image (its contents are garbage): fresh
    multi-megabyte arrays per image cost page faults and cache misses."""
    arrays = _SCRATCH.__dict__
    arr = arrays.get(name)
    if arr is None or arr.shape != tuple(shape):
        arr = arrays[name] = np.empty(shape)
    return arr


def _per_channel(op, img, values) -> None:
    """``img[..., c] = op(img[..., c], values[c])`` for each channel: the same element-wise result
    as broadcasting ``values`` over the last axis, whose 3-long inner loop numpy runs slowly."""
    for c in range(img.shape[-1]):
        op(img[..., c], values[c], out=img[..., c])


def _normal_into(rng, scale: float, out):
    """``out[...] = rng.normal(0, scale, out.shape)``, the same draws, without a new array."""
    rng.standard_normal(out=out)
    out *= scale
    return out


def _background(rng, size, np, cv2):
    """Smooth random colour field + optional stripes + per-pixel noise (BGR uint8)."""
    base = rng.uniform(30, 225, size=3)
    grid = int(rng.integers(2, 9))
    field = rng.uniform(-1, 1, size=(grid, grid, 3)).astype(np.float32)
    field = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
    field *= rng.uniform(10, 60)  # float32, as `field * k` was
    img = _scratch("background", field.shape, np)
    np.copyto(img, field)  # float32 -> float64, exact
    _per_channel(np.add, img, base)  # base + field
    if rng.random() < 0.3:  # faint stripes
        period = rng.uniform(6, 40)
        angle = rng.uniform(0, np.pi)
        ramp = np.arange(size, dtype=np.float64)
        phase = np.add((ramp * np.cos(angle))[None, :], (ramp * np.sin(angle))[:, None])  # x·cos + y·sin
        phase *= 2
        phase *= np.pi
        phase /= period
        np.sin(phase, out=phase)
        phase *= rng.uniform(5, 20)
        _per_channel(np.add, img, (phase, phase, phase))
    img += _normal_into(rng, rng.uniform(2, 14), _scratch("noise", img.shape, np))
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def _clutter(rng, canvas, np, cv2):
    """Unannotated distractors: straight lines, polylines and thin elongated blobs."""
    size = canvas.shape[0]
    for _ in range(int(rng.integers(0, 9))):
        kind = int(rng.integers(3))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        thick = int(rng.integers(1, 4))
        if kind == 0:
            p = rng.integers(0, size, size=4)
            cv2.line(canvas, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, thick)
        elif kind == 1:
            pts = rng.integers(0, size, size=(int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.polylines(canvas, [pts], False, colour, thick)
        else:
            c = rng.integers(0, size, size=2)
            major = int(rng.integers(6, max(7, size // 6)))
            minor = max(1, int(major * rng.uniform(0.08, 0.3)))
            cv2.ellipse(canvas, (int(c[0]), int(c[1])), (major, minor),
                        float(rng.uniform(0, 180)), 0, 360, colour, -1)


def _shape_pixels(rng, name, size, np, cv2):
    """The pixels of one shape, ``np.nonzero(mask)`` of :func:`_shape_mask` (row-major order),
    found in the shape's own box: every pixel drawn lies within ``half`` (+ rounding) of its
    centre; a count over the whole mask proves it, else the whole mask is searched."""
    mask, (cx, cy, half) = _shape_mask(rng, name, size, np, cv2, with_geometry=True)
    y0, x0 = max(0, int(cy - half) - 2), max(0, int(cx - half) - 2)
    ys, xs = np.nonzero(mask[y0:int(cy + half) + 3, x0:int(cx + half) + 3])
    if len(ys) != np.count_nonzero(mask):
        return np.nonzero(mask)
    return ys + y0, xs + x0


def _shape_mask(rng, name, size, np, cv2, with_geometry: bool = False):
    """Binary mask (uint8 0/1) of one shape, fully inside the image."""
    bucket = int(rng.integers(3))
    lo, hi = _SIZE_BUCKETS[bucket]
    hi = min(hi, 0.75 * size)
    lo = min(lo, hi)
    side = float(rng.uniform(lo, hi))
    half = side / 2.0
    margin = half + 1.0
    cx = float(rng.uniform(margin, size - margin)) if size - 2 * margin > 0 else size / 2.0
    cy = float(rng.uniform(margin, size - margin)) if size - 2 * margin > 0 else size / 2.0
    mask = np.zeros((size, size), dtype=np.uint8)
    if name == "circle":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), max(1, int(round(half))), 1, -1)
    elif name == "square":
        angle = 0.0 if rng.random() < 0.5 else float(rng.uniform(0, np.pi / 2))
        # a rotated square must still fit in the circle of radius `half`
        r = half
        pts = [(cx + r * np.cos(angle + np.pi / 4 + j * np.pi / 2),
                cy + r * np.sin(angle + np.pi / 4 + j * np.pi / 2)) for j in range(4)]
        if angle == 0.0:  # axis aligned: use the full side
            pts = [(cx - half, cy - half), (cx + half, cy - half),
                   (cx + half, cy + half), (cx - half, cy + half)]
        cv2.fillPoly(mask, [np.round(np.array(pts)).astype(np.int32)], 1)
    elif name == "triangle":
        theta = float(rng.uniform(0, 2 * np.pi))
        angles = theta + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.25, 0.25, 3)
        pts = np.stack([cx + half * np.cos(angles), cy + half * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    else:  # pragma: no cover - CLASSES and this function are kept in step
        raise ValueError(name)
    if not mask.any():
        mask[int(cy), int(cx)] = 1
    return (mask, (cx, cy, half)) if with_geometry else mask


def _pick_colour(rng, under, np):
    """A random colour that stands out from the mean of the pixels it will cover."""
    ref = under.reshape(-1, 3).astype(np.float64).mean(axis=0)
    colour = rng.integers(0, 256, size=3).astype(np.float64)
    for _ in range(20):
        if np.linalg.norm(colour - ref) >= _MIN_CONTRAST:
            break
        colour = rng.integers(0, 256, size=3).astype(np.float64)
    return colour


def _paint(rng, canvas, ys, xs, colour, np):
    """Fill the pixels ``ys, xs`` with ``colour`` plus a mild linear gradient and texture noise."""
    g = rng.uniform(-0.4, 0.4, size=2)
    grad = (xs - xs.mean()) * g[0] + (ys - ys.mean()) * g[1]
    vals = _normal_into(rng, rng.uniform(0, 10), np.empty((len(ys), 3)))  # the noise
    for c in range(3):  # (colour + grad) + noise, as colour[None, :] + grad[:, None] + noise was
        np.add(colour[c] + grad, vals[:, c], out=vals[:, c])
    np.clip(vals, 0, 255, out=vals)
    canvas[ys, xs] = vals.astype(np.uint8)


def _noise_on_top(rng, canvas, np):
    """Light sensor noise over the whole image after the objects are drawn."""
    sigma = float(rng.uniform(0, 4))
    noisy = _normal_into(rng, sigma, _scratch("noise", canvas.shape, np))
    noisy += canvas  # float64 + uint8 as float64: the same sums as canvas + noise
    np.clip(noisy, 0, 255, out=noisy)
    canvas[...] = noisy  # the same truncating cast as astype(np.uint8)
