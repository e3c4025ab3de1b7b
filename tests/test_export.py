"""The exported graphs decode and suppress exactly as mmyolo does, for every family.

Random weights, 128 px, batch 2 of random images with different aspect
ratios (so the letterbox pads).  Each family is built and exported once per
module (module-scoped, parametrised fixture) to keep the run short.

fp32 tolerances, ONNX Runtime vs torch: boxes 1e-2 px + 1e-4 relative (boxes
reach ~500 px and ORT's conv kernels round differently; the largest seen is
0.022 px on a 400 px YOLOv7 box), scores 1e-5 absolute.  Torch vs mmyolo's
own tensors: exact, since the same ops run on the same values.  NMS outputs
are compared on a shared decode, so only NMS itself can differ.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import has_module

pytestmark = pytest.mark.skipif(
    not all(has_module(m) for m in ("mmyolo", "onnx", "onnxruntime")),
    reason="needs mmyolo, onnx and onnxruntime")

FAMILIES = ["yolov5_s", "yolov6_n", "yolov7_tiny", "yolov8_n", "yolox_tiny", "ppyoloe_plus_s",
            "rtmdet_tiny"]
IMGSZ = 128
BOX_ATOL, BOX_RTOL, SCORE_ATOL = 1e-2, 1e-4, 1e-5
KEEP_TOPK = 100


@dataclass
class Family:
    name: str
    cfg: object
    model: object
    inputs: object  # torch (2, 3, 128, 128)
    metas: list
    boxes: object  # DeployModel(nms='none') in torch
    scores: object
    nms_thr: float = 0.0  # score threshold of the exported ONNX NMS graph
    onnx: dict = field(default_factory=dict)  # nms kind -> export metadata
    sessions: dict = field(default_factory=dict)

    def session(self, kind: str):
        import onnxruntime as ort

        if kind not in self.sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 2
            self.sessions[kind] = ort.InferenceSession(self.onnx[kind]["path"], opts,
                                                       providers=["CPUExecutionProvider"])
        return self.sessions[kind]

    def run(self, kind: str, inputs=None):
        x = self.inputs if inputs is None else inputs
        return self.session(kind).run(None, {"images": x.numpy()})


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory) -> Family:
    import torch

    from harness.export.deploy import DeployModel
    from harness.export.onnx_export import export_onnx
    from harness.models.mmyolo_build import build_model, load_config, prepare_mm
    from harness.models.preprocess import Preprocessor
    from harness.models.table import packaged_config

    prepare_mm()
    name = request.param
    cfg = load_config(packaged_config(name), IMGSZ)
    model = build_model(cfg, "random")
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (100, 150, 3), dtype=np.uint8),
              rng.integers(0, 256, (140, 90, 3), dtype=np.uint8)]
    prep = Preprocessor(cfg)(images, [0, 1])
    _trained_like(model, prep.inputs)
    with torch.no_grad():
        boxes, scores = DeployModel(model).eval()(prep.inputs)
    fam = Family(name, cfg, model, prep.inputs, prep.metas, boxes, scores)
    out = tmp_path_factory.mktemp(name)
    fam.onnx["none"] = export_onnx(model, cfg, out / "none.onnx", imgsz=IMGSZ)
    # Untrained scores sit near the class prior, so the config's score_thr would keep
    # everything or nothing.  The 99th percentile keeps a few hundred (prior, class)
    # pairs per image, as a trained model would, and pre_topk >= priors leaves the
    # ONNX NMS comparable to an unrestricted host NMS.
    fam.nms_thr = float(torch.quantile(scores.flatten(1), 0.99, dim=1).min())
    fam.onnx["onnx"] = export_onnx(model, cfg, out / "onnx.onnx", imgsz=IMGSZ, nms="onnx",
                                   pre_topk=100000, keep_topk=KEEP_TOPK, score_thr=fam.nms_thr)
    yield fam
    fam.sessions.clear()


def _trained_like(model, inputs) -> None:
    """Make seeded random weights produce varied scores and boxes.

    Fresh init is degenerate in eval mode: BN running stats (mean 0, var 1)
    let activations vanish layer by layer, and YOLOv6/PPYOLOE zero their
    prediction convs, so every prior of a level gets the same score and box.
    NMS among exact ties depends on visiting order, not on the graph, so the
    tests first calibrate BN on the inputs and give zero convs small weights.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.bbox_head.modules():
            if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.01)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one pass sets the stats
        model.train()
        model.bbox_head(model.extract_feat(inputs))
    model.eval()


def _raw(fam: Family):
    import torch

    with torch.no_grad():
        return fam.model.bbox_head(fam.model.extract_feat(fam.inputs))


def _mm_cfg(fam: Family, **overrides):
    from mmengine.config import ConfigDict

    cfg = copy.deepcopy(fam.model.bbox_head.test_cfg)
    cfg.update(overrides)
    return ConfigDict(cfg)


# ----------------------------------------------------------------------- (a) decode oracle

def test_decode_equals_mmyolo_predict_by_feat(family, monkeypatch):
    """Oracle: the tensors *inside* mmyolo's own predict_by_feat.

    ``bbox_coder.decode`` is wrapped on the head instance to record the decoded
    boxes, and ``filter_scores_and_topk`` (the first consumer of the scores) is
    wrapped in the yolov5_head module to record each image's (A, C) scores
    after objectness.  score_thr=0 disables the objectness pre-filter and
    multi_label=True keeps the full per-class matrix, so the recording is
    exactly mmyolo's pre-threshold decode, with no re-implementation in the test.
    """
    import torch
    from mmyolo.models.dense_heads import yolov5_head

    head = family.model.bbox_head
    seen = {"boxes": [], "scores": []}
    decode, filt = head.bbox_coder.decode, yolov5_head.filter_scores_and_topk

    def rec_decode(*args, **kwargs):
        out = decode(*args, **kwargs)
        seen["boxes"].append(out.clone())
        return out

    def rec_filter(scores, *args, **kwargs):
        seen["scores"].append(scores.clone())
        return filt(scores, *args, **kwargs)

    monkeypatch.setattr(head.bbox_coder, "decode", rec_decode)
    monkeypatch.setattr(yolov5_head, "filter_scores_and_topk", rec_filter)
    with torch.no_grad():
        head.predict_by_feat(*_raw(family), batch_img_metas=family.metas,
                             cfg=_mm_cfg(family, score_thr=0.0, multi_label=True, nms_pre=1),
                             rescale=False)
    assert len(seen["boxes"]) == 1 and len(seen["scores"]) == 2
    torch.testing.assert_close(family.boxes, seen["boxes"][0], rtol=0, atol=0)
    torch.testing.assert_close(family.scores, torch.stack(seen["scores"]), rtol=0, atol=0)


# ----------------------------------------------------------------------- (b) ORT vs torch

def test_onnx_decode_equals_torch(family):
    boxes, scores = family.run("none")
    # YOLOv7 decodes wh as (2 * sigmoid)^2 * anchor: fp32 differences between ONNX Runtime's and
    # torch's convolutions grow 4x through it; onnxruntime 1.32 put 2 of 8064 values 6e-4
    # relative (0.027 px) apart, so its boxes get rtol 1e-3 (the other families keep 1e-4)
    rtol = 1e-3 if family.name.startswith("yolov7") else BOX_RTOL
    np.testing.assert_allclose(boxes, family.boxes.numpy(), rtol=rtol, atol=BOX_ATOL)
    np.testing.assert_allclose(scores, family.scores.numpy(), rtol=0, atol=SCORE_ATOL)
    one_boxes, one_scores = family.run("none", family.inputs[1:])  # dynamic batch
    _assert_boxes_close(one_boxes[0], boxes[1])
    np.testing.assert_allclose(one_scores[0], scores[1], rtol=0, atol=SCORE_ATOL)


def _assert_boxes_close(got, ref):
    np.testing.assert_allclose(got, ref, rtol=BOX_RTOL, atol=BOX_ATOL)


def test_onnx_nms_graph_equals_torch_reference(family):
    """ORT's NonMaxSuppression graph and the Function's torch forward keep the same boxes.

    Both start from ORT's decode (the ``none`` graph), so the comparison is
    about NMS and the padding/gather glue, not about fp32 noise in the network.
    """
    import torch

    from harness.export.deploy import DeployModel

    meta = family.onnx["onnx"]
    deploy = DeployModel(family.model, nms="onnx", pre_topk=meta["pre_topk"],
                         keep_topk=meta["keep_topk"], iou_thr=meta["iou_thr"],
                         score_thr=meta["score_thr"])
    boxes, scores = (torch.from_numpy(a) for a in family.run("none"))
    ref = [t.numpy() for t in deploy.postprocess(boxes, scores)]
    got = family.run("onnx")
    assert [g.dtype for g in got] == [np.int32, np.float32, np.float32, np.int32]
    assert [g.shape for g in got] == [(2, 1), (2, KEEP_TOPK, 4), (2, KEEP_TOPK), (2, KEEP_TOPK)]
    np.testing.assert_array_equal(got[0], ref[0])
    for i in range(len(got[0])):
        _assert_same_detections([g[i] for g in got[1:]], [r[i] for r in ref[1:]], int(got[0][i, 0]))
    alone = family.run("onnx", family.inputs[1:])  # dynamic batch through the padding glue
    assert int(alone[0][0, 0]) == int(got[0][1, 0])
    _assert_same_detections([a[0] for a in alone[1:]], [g[1] for g in got[1:]], int(got[0][1, 0]),
                            box_atol=BOX_ATOL, box_rtol=BOX_RTOL, score_atol=SCORE_ATOL)


def test_onnx_nms_graph_with_nothing_above_threshold(tmp_path):
    """No box passes: NonMaxSuppression returns zero rows and the outputs are all padding."""
    import onnxruntime as ort
    import torch

    from harness.export.onnx_export import export_onnx
    from harness.models.mmyolo_build import build_model, load_config, prepare_mm
    from harness.models.table import packaged_config

    prepare_mm()
    cfg = load_config(packaged_config("yolov8_n"), IMGSZ)
    meta = export_onnx(build_model(cfg, "random"), cfg, tmp_path / "m.onnx", imgsz=IMGSZ,
                       nms="onnx", keep_topk=7, score_thr=0.999, simplify=False)
    sess = ort.InferenceSession(meta["path"], providers=["CPUExecutionProvider"])
    num, boxes, scores, labels = sess.run(None, {"images": torch.zeros(3, 3, IMGSZ, IMGSZ).numpy()})
    assert num.tolist() == [[0]] * 3 and (labels == -1).all()
    assert boxes.shape == (3, 7, 4) and not boxes.any() and not scores.any()


# ----------------------------------------------------------------------- (c) host NMS

def _canonical(boxes, scores, labels):
    """Rows sorted by (score desc, label, x1, y1, x2, y2): equal sets compare equal."""
    import numpy as np

    import torch

    b, s, lab = boxes.double().numpy(), scores.double().numpy(), labels.long().numpy()
    order = np.lexsort((b[:, 3].round(3), b[:, 2].round(3), b[:, 1].round(3), b[:, 0].round(3), lab, -s))
    return torch.from_numpy(b[order]), torch.from_numpy(s[order]), torch.from_numpy(lab[order])


@pytest.mark.parametrize("setting", ["config", "busy", "empty"])
def test_host_postprocess_equals_mmyolo_predict(family, setting):
    """Decoded tensors + host NMS == mmyolo's predict_by_feat, rescaled to original pixels.

    "config" is the model's own test_cfg with nms_pre capped at 1000 (untrained
    scores all pass its score_thr, and NMS over every pair costs minutes on the
    plain-torch mmcv stand-in); "busy" lowers score_thr to the 99.5th percentile
    of each image's scores and nms_pre below the survivors, so thresholding,
    top-k, NMS and rescale all do work; "empty" keeps nothing.
    """
    import torch

    from harness.export.host_nms import host_postprocess

    if setting == "config":
        cfg = _mm_cfg(family, nms_pre=1000)
    elif setting == "busy":
        thr = float(torch.quantile(family.scores.flatten(1), 0.995, dim=1).min())
        cfg = _mm_cfg(family, score_thr=thr, nms_pre=200)
    else:
        cfg = _mm_cfg(family, score_thr=1.0)
    with torch.no_grad():
        expected = family.model.bbox_head.predict_by_feat(
            *_raw(family), batch_img_metas=family.metas, cfg=cfg, rescale=True)
    got = host_postprocess(family.boxes, family.scores, family.metas, cfg)
    for exp, (boxes, scores, labels) in zip(expected, got):
        assert len(boxes) == len(exp.bboxes)
        # detbench orders exact score ties by input position (stable sorts); mmdet's torch.sort
        # leaves their order undefined: compare in a canonical order (score, label, box)
        a = _canonical(boxes, scores, labels)
        b = _canonical(exp.bboxes, exp.scores, exp.labels)
        torch.testing.assert_close(a[2], b[2], rtol=0, atol=0)
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-7)
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-4)
    counts = [len(r.bboxes) for r in expected]
    if setting == "busy":
        assert all(counts)
    elif setting == "empty":
        assert not any(counts)


# ----------------------------------------------------------------------- (d) ORT NMS vs host

def test_onnx_nms_graph_equals_host_nms(family):
    """With no pre-top-k, ONNX NMS must keep what mmcv's batched_nms keeps.

    Per-class NMS with keep_topk per class, then the best keep_topk overall,
    selects the same set as NMS over all (prior, class) pairs cut at keep_topk.
    Compared in input pixels (no rescale), both on ORT's decode.
    """
    from harness.export.host_nms import host_postprocess

    meta = family.onnx["onnx"]
    cfg = dict(multi_label=True, score_thr=family.nms_thr, nms_pre=10**9,
               max_per_img=meta["keep_topk"],
               nms=dict(type="nms", iou_threshold=meta["iou_thr"]))
    decoded_boxes, decoded_scores = family.run("none")  # the NMS graph's own decode
    host = host_postprocess(decoded_boxes, decoded_scores, family.metas, cfg, rescale=False)
    num, boxes, scores, labels = family.run("onnx")
    for i, (h_boxes, h_scores, h_labels) in enumerate(host):
        assert int(num[i, 0]) == len(h_boxes) > 0
        _assert_same_detections((boxes[i], scores[i], labels[i]),
                                (h_boxes.numpy(), h_scores.numpy(), h_labels.numpy()), len(h_boxes))
        pad = slice(len(h_boxes), None)  # padding rows: label -1, score 0, box 0
        assert (labels[i, pad] == -1).all() and not scores[i, pad].any() and not boxes[i, pad].any()


def _assert_same_detections(got, ref, count: int, *, box_atol: float = 1e-4,
                            box_rtol: float = 0.0, score_atol: float = 1e-7):
    """The first ``count`` detections match one to one: label, box and score.

    Order may differ among equal scores, so each reference detection is looked
    up rather than compared position by position.  The default tolerances are
    for NMS run on one shared decode (only gathers between them).
    """
    g_boxes, g_scores, g_labels = (np.asarray(a)[:count] for a in got)
    r_boxes, r_scores, r_labels = (np.asarray(a)[:count] for a in ref)
    np.testing.assert_allclose(np.sort(g_scores), np.sort(r_scores), rtol=0, atol=score_atol)
    unused = np.ones(count, dtype=bool)
    for j in np.argsort(-r_scores, kind="stable"):
        hit = (unused & (g_labels == r_labels[j]) & (np.abs(g_scores - r_scores[j]) <= score_atol)
               & (np.abs(g_boxes - r_boxes[j]) <= box_atol + box_rtol * np.abs(r_boxes[j])).all(1))
        assert hit.any(), f"detection {r_labels[j]} {r_boxes[j]} {r_scores[j]} missing"
        unused[np.argmax(hit)] = False


# ----------------------------------------------------------------------- (e) TensorRT plugins

PLUGIN_ATTRS = {
    "efficient_nms": ("EfficientNMS_TRT", {
        "background_class": -1, "box_coding": 0, "iou_threshold": 0.5,
        "max_output_boxes": 50, "plugin_version": b"1", "score_activation": 0,
        "score_threshold": 0.25}),
    "batched_nms": ("BatchedNMSDynamic_TRT", {
        "shareLocation": 1, "backgroundLabelId": -1, "numClasses": 80, "keepTopK": 50,
        "scoreThreshold": 0.25, "iouThreshold": 0.5, "isNormalized": 0, "clipBoxes": 0,
        "caffeSemantics": 0, "plugin_version": b"1"}),
}


@pytest.mark.parametrize("kind", sorted(PLUGIN_ATTRS))
def test_trt_plugin_graph(family, kind, tmp_path):
    import onnx

    from harness.export.deploy import OUTPUT_NAMES, TRT_PLUGIN_DOMAIN
    from harness.export.onnx_export import export_onnx

    meta = export_onnx(family.model, family.cfg, tmp_path / f"{kind}.onnx", imgsz=IMGSZ, nms=kind,
                       pre_topk=200, keep_topk=50, iou_thr=0.5, score_thr=0.25,
                       simplify=family.name == "yolov8_n")  # one family covers the slim path
    proto = onnx.load(meta["path"])
    onnx.checker.check_model(proto)
    op_type, attrs = PLUGIN_ATTRS[kind]
    (node,) = [n for n in proto.graph.node if n.op_type == op_type]
    assert node.domain == TRT_PLUGIN_DOMAIN
    got = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    for key, value in attrs.items():
        assert got[key] == pytest.approx(value), key
    from harness.trt.capability import graph_features

    # both plugins get the pre-top-k boxes only (a TopK of K=200 ahead of the plugin)
    assert [k for _, k in graph_features(proto).topk] == [min(200, family.boxes.shape[1])]
    if kind == "batched_nms":
        assert got["topK"] == 200
    assert [o["name"] for o in meta["outputs"]] == list(OUTPUT_NAMES[kind])
    assert [o["shape"] for o in meta["outputs"]] == [["batch", 1], ["batch", 50, 4],
                                                     ["batch", 50], ["batch", 50]]
    elem = [o.type.tensor_type.elem_type for o in proto.graph.output]
    assert elem == [onnx.TensorProto.INT32, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT,
                    onnx.TensorProto.INT32]
    if family.name == "yolov8_n" and has_module("onnxslim"):
        assert meta["simplifier"]["tool"] == "onnxslim" and meta["simplify_skipped"] is None


def _shape_of(proto, name: str):
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        if value.name == name:
            return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    raise AssertionError(f"no shape for {name}")


# ----------------------------------------------------------------------- metadata and cache

def test_export_metadata(family):
    import onnx
    import torch

    from harness.export.onnx_export import file_sha256

    meta = family.onnx["none"]
    assert meta["opset"] == 17 and meta["sha256"] == file_sha256(meta["path"])
    assert meta["inputs"] == [{"name": "images", "shape": ["batch", 3, IMGSZ, IMGSZ]}]
    a = family.boxes.shape[1]
    assert meta["outputs"] == [{"name": "boxes", "shape": ["batch", a, 4]},
                               {"name": "scores", "shape": ["batch", a, 80]}]
    assert meta["exporter"] == {"tool": "torch.onnx.export(dynamo=False)",
                                "torch": torch.__version__}
    if has_module("onnxslim"):
        assert meta["simplifier"]["tool"] == "onnxslim" and meta["simplify_skipped"] is None
    props = {p.key: p.value for p in onnx.load(meta["path"]).metadata_props}
    assert props["detbench.nms"] == "none"


def test_export_cached_builds_once_and_keys_on_options(tmp_path):
    from harness.export.onnx_export import export_cached

    calls = []

    def build(path: Path):
        calls.append(path)
        path.write_bytes(b"onnx-bytes")
        return {"made": True}

    key = {"config": "abc", "checkpoint": "random", "options": {"imgsz": 128, "nms": "none"}}
    first = export_cached(tmp_path, key, build)
    again = export_cached(tmp_path, dict(key), build)
    other = export_cached(tmp_path, {**key, "options": {"imgsz": 128, "nms": "onnx"}}, build)
    assert first == again != other and len(calls) == 2
    assert first.read_bytes() == b"onnx-bytes"
    assert json.loads(first.with_suffix(".json").read_text())["key"]["config"] == "abc"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []


def test_export_cached_leaves_nothing_on_failure(tmp_path):
    from harness.export.onnx_export import export_cached

    def broken(path: Path):
        path.write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError):
        export_cached(tmp_path, {"config": "x"}, broken)
    assert [p for p in tmp_path.iterdir() if p.suffix != ".lock"] == []  # the build lock stays


def test_export_key_hashes_config_and_options():
    from harness.export.onnx_export import config_sha256, export_key
    from harness.models.table import packaged_config

    path = packaged_config("yolov8_n")
    key = export_key(path, "random", imgsz=128, nms="none")
    assert key == {"config": config_sha256(path), "checkpoint": "random",
                   "options": {"imgsz": 128, "nms": "none"}}
    assert config_sha256(packaged_config("yolov8_n")) != config_sha256(packaged_config("rtmdet_tiny"))


def test_old_opset_is_a_user_error(tmp_path):
    from harness.errors import UserError
    from harness.export.onnx_export import export_onnx

    with pytest.raises(UserError, match="opset 10"):
        export_onnx(None, None, tmp_path / "m.onnx", imgsz=IMGSZ, opset=10)


def test_unknown_nms_is_a_user_error():
    from harness.errors import UserError
    from harness.export.deploy import DeployModel

    with pytest.raises(UserError, match="unknown nms"):
        DeployModel(object(), nms="soft")
