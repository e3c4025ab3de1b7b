"""A bad calibration set is a clear user error, before any quantizer runs."""
from __future__ import annotations

import pytest

from conftest import has_module
from harness.errors import UserError

pytestmark = pytest.mark.skipif(not has_module("cv2"), reason="needs opencv (extra mmyolo)")


def fake_pre(images, ids):
    raise AssertionError("preprocessing must not run for a bad set")


def test_empty_calibration_set_is_refused():
    from harness.calibration.data import build_calibration_set

    with pytest.raises(UserError, match="calibration set from nowhere is empty"):
        build_calibration_set([], fake_pre, 8, "nowhere")


def test_unreadable_calibration_image_is_named(tmp_path):
    from harness.calibration.data import build_calibration_set

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="calibration image '.*broken.png' could not be read"):
        build_calibration_set([bad], fake_pre, 8, "test")


def test_calibrating_on_the_evaluation_split_is_refused(tmp_path):
    from harness.calibration.data import calibration_images

    cell = {"calibration": {"images": 4, "seed": 2, "source": None},
            "dataset": {"synth": {"images": 4, "seed": 2, "size": 64}}}
    with pytest.raises(UserError, match="equals the evaluation dataset's seed"):
        calibration_images(cell, tmp_path)


def test_calibration_source_without_images_is_refused(tmp_path):
    import json

    from harness.calibration.data import calibration_images

    (tmp_path / "imgs").mkdir()
    ann = tmp_path / "empty.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    cell = {"calibration": {"images": 4, "seed": 3,
                            "source": {"images": str(tmp_path / "imgs"), "annotations": str(ann)}},
            "dataset": {"synth": {"images": 4, "seed": 2, "size": 64}}}
    with pytest.raises(UserError, match="lists no images"):
        calibration_images(cell, tmp_path)
