"""Tests for the synthetic rotated dataset generator (harness.data.synth_rotated) and box_type()."""
import json
import math

import pytest

from conftest import run_cli
from harness.data import synth_rotated as sr
from harness.errors import UserError

np = pytest.importorskip("numpy")
pytest.importorskip("cv2")
shapely = pytest.importorskip("shapely")


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def thirty(tmp_path_factory):
    out = tmp_path_factory.mktemp("rot30")
    return sr.generate(out, images=30, seed=5, size=256)


def test_identical_whatever_the_worker_count(tmp_path):
    one = _tree(sr.generate(tmp_path / "w1", images=8, seed=3, size=128, workers=1).parent)
    three = _tree(sr.generate(tmp_path / "w3", images=8, seed=3, size=128, workers=3).parent)
    assert len(one) == 17  # 8 PNGs + 8 labelTxt + annotations.json
    assert one == three
    more = _tree(sr.generate(tmp_path / "w2", images=11, seed=3, size=128, workers=2).parent)
    assert all(more[k] == v for k, v in one.items() if k != "annotations.json")
    other = _tree(sr.generate(tmp_path / "s4", images=8, seed=4, size=128, workers=2).parent)
    assert other["images/000000.png"] != one["images/000000.png"]


def test_corner_order_is_mmrotate_rbox2qbox():
    # u = (cos a, sin a) w/2, v = (-sin a, cos a) h/2; corners c+u+v, c+u-v, c-u-v, c-u+v
    assert sr.rbox_corners(10, 20, 4, 2, 0.0) == [12, 21, 12, 19, 8, 19, 8, 21]
    got = sr.rbox_corners(10, 20, 4, 2, math.pi / 2)
    assert np.allclose(got, [9, 22, 11, 22, 11, 18, 9, 18])


def test_format(thirty):
    from pycocotools.coco import COCO
    from shapely import affinity
    from shapely.geometry import Polygon, box

    doc = json.loads(thirty.read_text())
    assert doc["info"]["box_type"] == "rotated" and doc["info"]["angle_version"] == "le90"
    assert [c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"])] == list(sr.CLASSES)
    coco = COCO(str(thirty))  # COCO tools still load it (bbox + polygon segmentation)
    assert len(coco.getImgIds()) == 30
    anns = doc["annotations"]
    assert {a["category_id"] for a in anns} == set(range(1, len(sr.CLASSES) + 1))
    assert {a["difficult"] for a in anns} == {0, 1}
    for a in anns:
        assert set(a) == {"id", "image_id", "category_id", "bbox", "segmentation", "rbox", "area",
                          "iscrowd", "difficult"}
        cx, cy, w, h, ang = a["rbox"]
        assert -math.pi / 2 <= ang < math.pi / 2 and w >= h > 0  # le90
        assert a["area"] == pytest.approx(w * h) and a["iscrowd"] == 0
        corners = np.array(a["segmentation"][0]).reshape(4, 2)
        # the corners are the rbox, checked independently with shapely
        ref = affinity.translate(affinity.rotate(box(-w / 2, -h / 2, w / 2, h / 2), ang,
                                                 origin=(0, 0), use_radians=True), cx, cy)
        poly = Polygon(corners)
        assert poly.is_valid and poly.symmetric_difference(ref).area < 1e-6 * w * h
        assert (corners >= 0).all() and (corners <= 256).all()
        x, y, bw, bh = a["bbox"]
        assert (x, y) == pytest.approx(tuple(corners.min(axis=0)))
        assert (x + bw, y + bh) == pytest.approx(tuple(corners.max(axis=0)))
        assert coco.annToMask(a).sum() == pytest.approx(w * h, abs=2 * (w + h) + 4)


def test_dota_label_txt_matches_json(thirty):
    root = thirty.parent
    doc = json.loads(thirty.read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    txts = sorted((root / "labelTxt").glob("*.txt"))
    assert [p.stem for p in txts] == [p.stem for p in sorted((root / "images").glob("*.png"))]
    for im in doc["images"]:
        lines = (root / "labelTxt" / (im["file_name"][:-4] + ".txt")).read_text().splitlines()
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        assert len(lines) == len(anns) >= 1
        for line, a in zip(lines, anns):
            parts = line.split()
            assert len(parts) == 10
            assert np.allclose([float(v) for v in parts[:8]], a["segmentation"][0], atol=6e-4)
            assert parts[8] == names[a["category_id"]] and int(parts[9]) == a["difficult"]


def test_ground_truth_is_the_drawn_shape(thirty):
    """Every annotated shape's pixels lie in its rotated box and touch all four sides;
    its principal axis is the box angle; rectangles fill the box."""
    import cv2
    from shapely import prepared
    from shapely.geometry import LineString, MultiPoint, Polygon

    doc = json.loads(thirty.read_text())
    checked_angles = 0
    for im in doc["images"][:15]:
        idx = im["id"] - 1
        canvas, objects = sr.render(idx, seed=5, size=256)
        png = cv2.imread(str(thirty.parent / "images" / im["file_name"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(png, canvas)  # the file is what render() drew
        annotated = [o for o in objects if o["annotated"]]
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        assert len(anns) == len(annotated)
        for a, o in zip(anns, annotated):
            assert a["category_id"] == o["cls"] + 1
            ys, xs = np.nonzero(o["mask"])
            centres = np.stack([xs + 0.5, ys + 0.5], axis=1)  # pixel (i, j) covers [i, i+1)
            poly = Polygon(np.array(a["segmentation"][0]).reshape(4, 2))
            inside = prepared.prep(poly.buffer(1e-9))
            assert all(inside.contains(p) for p in MultiPoint(centres).geoms)
            pts = MultiPoint(centres)
            corners = np.array(a["segmentation"][0]).reshape(4, 2)
            cx, cy, w, h, ang = a["rbox"]
            name = sr.CLASSES[o["cls"]]
            # it touches every side: a rectangle's sides are full rows of pixels; elsewhere a
            # tip of half-angle ~h/w touches it, and the first pixel centre inside a tip lies
            # up to ~0.71 / sin(half-angle) ~ 1.5 w / h from it
            tol = 1.0 if name == "rectangle" else 1.0 + 1.5 * w / h
            for k in range(4):
                side = LineString([corners[k], corners[(k + 1) % 4]])
                assert side.distance(pts) <= tol, (a, k)
            if name == "rectangle":
                assert abs(len(xs) - w * h) <= 2 * (w + h), (len(xs), w * h)
            if name != "triangle":
                assert np.allclose(centres.mean(axis=0), (cx, cy), atol=0.75)
            if w >= 40:
                # principal axis of the pixels (second moments) == the box's long axis, mod pi
                d = centres - centres.mean(axis=0)
                cov = d.T @ d / len(d)
                axis = 0.5 * math.atan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])
                diff = (axis - ang + math.pi / 2) % math.pi - math.pi / 2
                assert abs(diff) < math.radians(3), (name, ang, axis)
                checked_angles += 1
    assert checked_angles >= 10


def test_occlusion_flags(thirty):
    seen = set()
    for idx in range(30):
        _, objects = sr.render(idx, seed=5, size=256)
        assert objects[-1]["annotated"] and not objects[-1]["difficult"]  # the top one is whole
        for o in objects:
            hidden = 1 - o["visible"] / o["mask"].sum()
            assert o["annotated"] == (hidden <= sr.MAX_OCCLUSION)
            assert o["difficult"] == int(hidden > sr.DIFFICULT_OCCLUSION)
            seen.add((o["annotated"], o["difficult"]))
    assert seen == {(True, 0), (True, 1), (False, 1)}


def test_sizes_and_angles_spread(thirty):
    anns = json.loads(thirty.read_text())["annotations"]
    longs = [a["rbox"][2] for a in anns]
    assert min(longs) < 34 and max(longs) > 96
    angles = np.array([a["rbox"][4] for a in anns])
    assert np.histogram(angles, bins=4, range=(-math.pi / 2, math.pi / 2))[0].min() >= 5


def test_box_type(tmp_path, thirty):
    from harness.data import synth
    from harness.data.datasets import box_type

    assert box_type(thirty) == "rotated"
    assert box_type(synth.generate(tmp_path / "h", images=1, seed=0, size=64)) == "horizontal"
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert box_type(plain) == "horizontal"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"info": {"box_type": "quad"}, "images": []}))
    with pytest.raises(UserError, match=r"bad\.json.*info\.box_type 'quad'.*'rotated'"):
        box_type(bad)
    with pytest.raises(UserError, match="does not exist"):
        box_type(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("[1, 2")
    with pytest.raises(UserError, match="not valid JSON"):
        box_type(tmp_path / "x.json")


def test_cli(tmp_path):
    r = run_cli("synth", "--rotated", "--out", "ds", "--images", "3", "--seed", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "labelTxt" in r.stdout
    doc = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert doc["info"]["box_type"] == "rotated" and doc["info"]["size"] == 256
    ref = sr.generate(tmp_path / "ref", images=3, seed=5)
    assert _tree(tmp_path / "ds") == _tree(ref.parent)
    r = run_cli("synth", "--rotated", "--out", "bad", "--images", "3", "--size", "8", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "--size" in r.stderr and "8" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_import_is_light():
    import pathlib
    import subprocess
    import sys

    code = ("import sys; import harness.data.synth_rotated; "
            "assert 'cv2' not in sys.modules and 'numpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=pathlib.Path(__file__).resolve().parents[1])
