"""The paired bootstrap of ΔAP (#18): weighted re-accumulation equals pycocotools, and the
interval behaves (covers the truth of a known perturbation, shrinks with more images)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harness.evaluate.ap_bootstrap import image_matches, paired_delta, resample_weights, weighted_ap
from harness.evaluate.coco_eval import evaluate


def _dataset(tmp_path, n_images=40, seed=0):
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 320, "height": 320})
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 250, 2)
            w, h = rng.uniform(8, 70, 2)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 4)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.03)})
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}))
    return path, anns, [im["id"] for im in images]


def _detections(anns, image_ids, rng, jitter=4.0, miss=0.1, extra=2):
    rows = []
    for a in anns:
        if rng.random() < miss:
            continue
        x, y, w, h = a["bbox"]
        d = rng.normal(0, jitter, 4)
        rows.append([a["image_id"], x + d[0], y + d[1], max(w + d[2], 1), max(h + d[3], 1),
                     round(float(rng.uniform(0.3, 1.0)), 6), a["category_id"]])
    for i in image_ids:
        for _ in range(rng.integers(0, extra + 1)):
            x, y = rng.uniform(0, 250, 2)
            rows.append([i, x, y, 30.0, 30.0, round(float(rng.uniform(0.05, 0.6)), 6),
                         int(rng.integers(1, 4))])
    rows = np.asarray(rows, dtype=np.float64)
    rows[:, 1:5] = np.round(rows[:, 1:5], 3)
    return rows


def _ap(path, rows, ids):
    from harness.evaluate.coco_eval import rows_to_detections

    return evaluate(path, rows_to_detections(rows), list(ids))["stats"]["AP"]


def test_unit_weights_and_subsets_give_pycocotools_ap(tmp_path):
    path, anns, ids = _dataset(tmp_path)
    rows = _detections(anns, ids, np.random.default_rng(1))
    m = image_matches(path, rows, ids)
    assert weighted_ap(m, np.ones((1, len(ids))))[0] == pytest.approx(_ap(path, rows, ids), abs=1e-12)
    rng = np.random.default_rng(2)
    for _ in range(3):  # weight 0 = image left out: pycocotools on the other images
        keep = rng.random(len(ids)) < 0.6
        subset = [i for i, k in zip(ids, keep) if k]
        sub_rows = rows[np.isin(rows[:, 0], subset)]
        assert weighted_ap(m, keep[None].astype(float))[0] == pytest.approx(_ap(path, sub_rows, subset), abs=1e-12)


def test_duplicated_image_counts_twice(tmp_path):
    """Weight 2 on an image = a dataset holding that image twice (new ids, same boxes)."""
    path, anns, ids = _dataset(tmp_path, n_images=12)
    rows = _detections(anns, ids, np.random.default_rng(3), extra=0)
    data = json.loads(path.read_text())
    twin = 1000 + ids[0]
    data["images"].append({**data["images"][0], "id": twin})
    data["annotations"] += [{**a, "id": 10_000 + a["id"], "image_id": twin}
                            for a in data["annotations"] if a["image_id"] == ids[0]]
    path2 = tmp_path / "ann2.json"
    path2.write_text(json.dumps(data))
    extra = rows[rows[:, 0] == ids[0]].copy()
    extra[:, 0] = twin
    extra[:, 5] -= 1e-6  # no exact ties with the original's detections
    expected = _ap(path2, np.concatenate([rows, extra]), ids + [twin])
    w = np.ones((1, len(ids)))
    w[0, 0] = 2
    got = weighted_ap(image_matches(path, rows, ids), w)[0]
    assert got == pytest.approx(expected, abs=2e-3)  # equal up to the tie of the twin detections
    assert got != pytest.approx(weighted_ap(image_matches(path, rows, ids), np.ones((1, len(ids))))[0], abs=1e-6)


def test_no_detections_scores_zero(tmp_path):
    path, _, ids = _dataset(tmp_path, n_images=10)
    m = image_matches(path, np.zeros((0, 7)), ids)
    assert weighted_ap(m, np.ones((1, len(ids))))[0] == 0.0


def test_paired_interval_sees_a_real_difference_and_not_a_null_one(tmp_path):
    path, anns, ids = _dataset(tmp_path, n_images=120, seed=5)
    rng = np.random.default_rng(7)
    ref_rows = _detections(anns, ids, rng, jitter=2.0, miss=0.05)
    ref = image_matches(path, ref_rows, ids)
    # the same detections: ΔAP 0 on every resample (paired), zero width
    same = paired_delta(ref, image_matches(path, ref_rows.copy(), ids), samples=200, seed=0)
    assert same["delta_ap"] == 0.0 and same["se"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.0
    # a much worse candidate (larger jitter, more misses): the whole interval below 0
    worse = image_matches(path, _detections(anns, ids, np.random.default_rng(8), jitter=9.0, miss=0.3), ids)
    d = paired_delta(ref, worse, samples=300, seed=0)
    assert d["delta_ap"] < 0 and d["ci_high"] < 0 and d["ci_low"] < d["delta_ap"] < d["ci_high"]
    assert 0 < d["se"] < abs(d["delta_ap"])
    # seeded: the same resamples, the same interval; another seed, another one
    assert paired_delta(ref, worse, samples=300, seed=0) == d
    assert paired_delta(ref, worse, samples=300, seed=1)["ci_low"] != d["ci_low"]
    # paired beats unpaired: the SE of the difference is below the SE of either AP alone
    w = resample_weights(len(ids), 300, 0)
    assert d["se"] < np.std(weighted_ap(worse, w), ddof=1) + np.std(weighted_ap(ref, w), ddof=1)


def test_different_images_refused(tmp_path):
    path, anns, ids = _dataset(tmp_path, n_images=20)
    rows = _detections(anns, ids, np.random.default_rng(1))
    with pytest.raises(ValueError, match="different images"):
        paired_delta(image_matches(path, rows, ids), image_matches(path, rows, ids[:-1]), samples=10)
