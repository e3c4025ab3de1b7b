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
