"""Tests for the synthetic COCO dataset generator (harness.data.synth)."""
import json

import pytest

from harness.data import synth

pytest.importorskip("cv2")
pytest.importorskip("numpy")


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth40")
    return synth.generate(out, images=40, seed=0)


def test_deterministic(tmp_path):
    a = synth.generate(tmp_path / "a", images=6, seed=7, size=160)
    b = synth.generate(tmp_path / "b", images=6, seed=7, size=160)
    ta, tb = _tree(a.parent), _tree(b.parent)
    assert ta.keys() == tb.keys()
    assert len(ta) == 7  # 6 PNGs + annotations.json
    assert ta == tb
    c = synth.generate(tmp_path / "c", images=6, seed=8, size=160)
    assert _tree(c.parent) != ta


def test_identical_whatever_the_worker_count(tmp_path):
    one = _tree(synth.generate(tmp_path / "w1", images=9, seed=3, size=96, workers=1).parent)
    three = _tree(synth.generate(tmp_path / "w3", images=9, seed=3, size=96, workers=3).parent)
    assert len(one) == 10 and one == three
    # a longer set starts with the same images: image i depends only on (seed, i)
    more = _tree(synth.generate(tmp_path / "w2", images=12, seed=3, size=96, workers=2).parent)
    assert all(more[k] == v for k, v in one.items() if k.endswith(".png"))


def test_layout_and_return_value(forty):
    root = forty.parent
    assert forty.name == "annotations.json"
    pngs = sorted((root / "images").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(40)]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_coco_valid(forty):
    from pycocotools.coco import COCO

    coco = COCO(str(forty))
    assert len(coco.getImgIds()) == 40
    assert len(coco.getAnnIds()) >= 40
    for img in coco.loadImgs(coco.getImgIds()):
        assert img["width"] == img["height"] == 320
        assert (forty.parent / "images" / img["file_name"]).is_file()
        assert coco.getAnnIds(imgIds=img["id"]), "every image keeps at least one object"
    for ann in coco.loadAnns(coco.getAnnIds()):
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 320 and y + h <= 320
        assert ann["iscrowd"] == 0
        assert 0 < ann["area"] <= w * h
        assert ann["category_id"] in coco.getCatIds()


def test_categories_match_classes(forty):
    doc = json.loads(forty.read_text())
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    assert [c["id"] for c in cats] == list(range(1, len(synth.CLASSES) + 1))
    assert tuple(c["name"] for c in cats) == synth.CLASSES
    used = {a["category_id"] for a in doc["annotations"]}
    assert used == set(range(1, len(synth.CLASSES) + 1))


def test_all_coco_area_ranges_present(forty):
    areas = [a["area"] for a in json.loads(forty.read_text())["annotations"]]
    assert any(a < 32 ** 2 for a in areas)
    assert any(32 ** 2 <= a <= 96 ** 2 for a in areas)
    assert any(a > 96 ** 2 for a in areas)


def test_max_objects_and_no_clutter(tmp_path):
    path = synth.generate(tmp_path, images=10, seed=3, size=128, max_objects=2, clutter=False)
    doc = json.loads(path.read_text())
    per_image = {}
    for a in doc["annotations"]:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert max(per_image.values()) <= 2
    assert set(per_image) == {im["id"] for im in doc["images"]}


def test_import_is_light():
    import pathlib
    import subprocess
    import sys

    code = ("import sys; import harness.data.synth; "
            "assert 'cv2' not in sys.modules and 'numpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=pathlib.Path(__file__).resolve().parents[1])


# -- the fast paths draw the same numbers and compute the same pixels as the plain arithmetic -------

def _plain_background(rng, size):
    """The straightforward form of synth._background (the form it had before #12's speed-up)."""
    import cv2
    import numpy as np

    base = rng.uniform(30, 225, size=3)
    grid = int(rng.integers(2, 9))
    field = rng.uniform(-1, 1, size=(grid, grid, 3)).astype(np.float32)
    field = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
    img = base + field * rng.uniform(10, 60)
    if rng.random() < 0.3:
        period = rng.uniform(6, 40)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period
        img += (np.sin(phase) * rng.uniform(5, 20))[..., None]
    img += rng.normal(0, rng.uniform(2, 14), size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _plain_noise_on_top(rng, canvas):
    import numpy as np

    sigma = float(rng.uniform(0, 4))
    noisy = canvas.astype(np.float64) + rng.normal(0, sigma, size=canvas.shape)
    canvas[...] = np.clip(noisy, 0, 255).astype(np.uint8)


def _has_stripes(rng) -> bool:
    """Whether _background takes its stripe branch for this stream (its first draws, replayed)."""
    rng.uniform(30, 225, size=3)
    grid = int(rng.integers(2, 9))
    rng.uniform(-1, 1, size=(grid, grid, 3))
    rng.uniform(10, 60)
    return rng.random() < 0.3


@pytest.mark.parametrize("size", [17, 96, 320])
def test_fast_paths_equal_the_plain_arithmetic(size):
    """Background (stripes in ~30 % of the seeds), sensor noise and shape pixels: byte-equal to
    the plain numpy forms, and the random stream is left at the same place."""
    import cv2
    import numpy as np

    stripes = 0
    for seed in range(40):
        fast, plain = np.random.default_rng([seed, size]), np.random.default_rng([seed, size])
        a, b = synth._background(fast, size, np, cv2), _plain_background(plain, size)
        assert a.dtype == b.dtype == np.uint8 and a.tobytes() == b.tobytes(), seed
        synth._noise_on_top(fast, a, np)
        _plain_noise_on_top(plain, b)
        assert a.tobytes() == b.tobytes(), seed
        for name in synth.CLASSES:
            ys, xs = synth._shape_pixels(fast, name, size, np, cv2)
            want = np.nonzero(synth._shape_mask(plain, name, size, np, cv2))
            assert np.array_equal(ys, want[0]) and np.array_equal(xs, want[1]), (seed, name)
        assert fast.integers(1 << 62) == plain.integers(1 << 62)  # same stream position
        stripes += _has_stripes(np.random.default_rng([seed, size]))
    assert stripes >= 3  # the stripe branch was exercised
