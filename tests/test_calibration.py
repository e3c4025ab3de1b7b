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


# ---------------------------------------------------------------- the four methods really differ


@pytest.fixture(scope="module")
def heavy_tailed_net(tmp_path_factory):
    """A two-conv ONNX net and a calibration set whose activations have rare large outliers:
    the data on which a clipping method must choose a smaller range than min/max."""
    import numpy as np
    import torch

    from harness.calibration.data import CalibrationSet

    tmp = tmp_path_factory.mktemp("methods")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 4, 3, padding=1)).eval()
    path = tmp / "net.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 16, 16), str(path), input_names=["images"],
                      output_names=["out"], opset_version=17, dynamo=False,
                      dynamic_axes={"images": {0: "batch"}, "out": {0: "batch"}})
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(4):
        x = rng.normal(0, 0.1, (8, 3, 16, 16)).astype(np.float32)
        x.reshape(-1)[rng.choice(x.size, 6, replace=False)] = 25.0  # ~0.1 % outliers
        batches.append(x)
    calib = CalibrationSet(batches, "heavy-tailed-test-data", 32, "test")
    return path, calib, tmp


def _activation_scales(qdq_path) -> dict:
    """Scale of every QuantizeLinear in the graph (activations: weights are stored quantized)."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(qdq_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    return {n.input[0]: float(inits[n.input[1]].max()) for n in g.node
            if n.op_type == "QuantizeLinear" and n.input[1] in inits}


@pytest.mark.skipif(not (has_module("onnxruntime") and has_module("torch") and has_module("onnx")),
                    reason="needs onnxruntime, torch and onnx")
def test_the_four_methods_choose_different_scales_and_the_graph_uses_them(heavy_tailed_net):
    """The traps of shared/notes/precision-tools.md: ONNX Runtime's entropy with 128 bins gives
    the min/max scales, ModelOpt's percentile silently runs max.  Here every method must give
    its own ranges AND its own Q/DQ graph, and the clipping methods a smaller input range."""
    from harness.calibration.qdq import quantize_qdq

    path, calib, tmp = heavy_tailed_net
    infos, scales = {}, {}
    for method in ("minmax", "entropy", "percentile", "mse"):
        qdq, infos[method] = quantize_qdq(path, calib, method, 99.9, tmp)
        scales[method] = _activation_scales(qdq)
        assert infos[method]["calibration_method"] == method
    hashes = {m: i["scales_sha256"] for m, i in infos.items()}
    assert len(set(hashes.values())) == 4, hashes
    graphs = {m: i["qdq_onnx_sha256"] for m, i in infos.items()}
    assert len(set(graphs.values())) == 4, graphs
    assert len({tuple(sorted(s.items())) for s in scales.values()}) == 4, scales
    first = "images"  # the network input: outliers of 25 among N(0, 0.1) values
    assert scales["minmax"][first] == pytest.approx(25.0 / 127, rel=1e-3)
    for method in ("entropy", "percentile"):  # they clip the 0.1 % outliers
        assert scales[method][first] < 0.5 * scales["minmax"][first], (method, scales[method][first])
    # mse weighs the outliers' squared clipping error: on the input it keeps (nearly) their range,
    # and the distinct scale sets above show it chose its own thresholds elsewhere
    assert scales["mse"][first] <= scales["minmax"][first] * (1 + 1e-6)
