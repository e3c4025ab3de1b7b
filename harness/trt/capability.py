"""Static checks of an ONNX graph against a TensorRT flavour, before any build.

A TensorRT build fails late and says little; these checks read the graph and
name the node, the limit and the fix:

* ``topk_k_exceeds_limit``: a TopK whose K (constant input, or the opset-1
  attribute) is above ``flavour.topk_max`` (TensorRT's documented 3840; RTX 1.7.1
  fails at build: "K exceeds the maximum value allowed (3840)");
* ``plugin_missing``: a node that is not a standard ONNX op (TensorRT's parser
  then looks it up as a plugin by op_type) and is not in ``flavour.plugins``
  (EfficientNMS_TRT / BatchedNMSDynamic_TRT on TensorRT-RTX);
* ``rotated_nms_plugin_absent``: a rotated model (RTMDet-R) with an in-graph NMS; rotated
  NMS in a TensorRT graph is mmdeploy's plugin ``TRTBatchedRotatedNMS``, which no flavour
  detbench builds with registers (refused at plan time: :func:`refuse_rotated_in_graph_nms`);
* ``op_unsupported``: ops a flavour parses but cannot build (NonMaxSuppression on
  TensorRT-RTX 1.7.1: "has no runners that implement it");
* ``int8_needs_qdq`` / ``fp16_needs_fp16_graph``: a strongly typed flavour takes
  precision from the graph only, so int8 needs Q/DQ nodes and fp16 fp16 tensors;
* ``int8_needs_calibration``: TensorRT 10 int8 of a graph without Q/DQ needs a
  calibrator;
* ``fp32_graph_not_fp32``: fp32 requested from a graph that carries fp16 tensors
  or Q/DQ nodes, which a strongly typed build keeps (the engine would not be fp32).

K values computed at run time are not checked (left to the builder).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError

PRECISIONS = ("fp32", "fp16", "int8")
NMS_PLUGINS = ("EfficientNMS_TRT", "BatchedNMSDynamic_TRT", "BatchedNMS_TRT", "TRTBatchedRotatedNMS")
#: the in-graph rotated NMS of TensorRT deployments of rotated detectors (mmdeploy's custom op)
ROTATED_NMS_PLUGIN = "TRTBatchedRotatedNMS"
# Which NVIDIA TensorRT registers each NMS plugin (NVIDIA/TensorRT plugin/README.md per release:
# batchedNMSPlugin is [DEPRECATED] since 9.0 and absent from the v11.0 / v11.1 trees and from
# plugin/api/inferPlugin.cpp there; EfficientNMS_TRT is [DEPRECATED] since 10.12, still
# registered in 11.1).
_BATCHED = ("NVIDIA TensorRT 10.x, whose libnvinfer_plugin registers {op} (deprecated since 9.0 and "
            "removed in TensorRT 11: no TensorRT 11 has it)")
PLUGIN_AVAILABILITY = {
    "EfficientNMS_TRT": "NVIDIA TensorRT 10/11, whose libnvinfer_plugin registers EfficientNMS_TRT "
                        "(deprecated since TensorRT 10.12; INMSLayer, i.e. nms='onnx', replaces it)",
    "BatchedNMSDynamic_TRT": _BATCHED.format(op="BatchedNMSDynamic_TRT"),
    "BatchedNMS_TRT": _BATCHED.format(op="BatchedNMS_TRT"),
    ROTATED_NMS_PLUGIN: "mmdeploy's TensorRT custom-op library (libmmdeploy_tensorrt_ops.so) loaded "
                        "into NVIDIA TensorRT: neither NVIDIA's libnvinfer_plugin nor TensorRT-RTX "
                        "registers TRTBatchedRotatedNMS, and detbench loads no mmdeploy library",
}
EFFICIENT_NMS_DEPRECATION = ("EfficientNMS_TRT is deprecated since TensorRT 10.12 (NVIDIA/TensorRT "
                             "plugin/efficientNMSPlugin/README.md; still registered in 11.1): "
                             "nms='onnx' (INMSLayer) is its replacement")
# In-graph NMS candidate caps that no attribute exposes (per image):
# * INMSLayer (what TensorRT's ONNX parser makes of NonMaxSuppression): TopK box limit, "the
#   maximum number of filtered boxes considered for selection per batch item", default 5000
#   (2000 on SM 5.3/6.2) (NvInfer.h, INMSLayer::setTopKBoxLimit); onnx-tensorrt's
#   NonMaxSuppression importer calls addNMS and never sets it.
# * EfficientNMS_TRT: numSelectedBoxes = 5000 (2000 on Jetson TX1/TX2) score elements, i.e.
#   (box, class) pairs above score_threshold (efficientNMSPlugin.cpp initialize); its README says
#   "the highest 4096 scores are processed".
# * BatchedNMSDynamic_TRT: topK <= 4096 (batchedNMSPlugin.cpp maxTopK) and "cannot handle
#   greater than 4096 rectangles in the input" (its README, Known issues).
INMS_TOPK_BOX_LIMIT = 5000
EFFICIENT_NMS_SELECTED = 5000
BATCHED_NMS_MAX_BOXES = 4096
# Standard ops a flavour parses but has no builder implementation for (measured).
UNBUILDABLE_OPS = {
    "tensorrt_rtx": {
        "NonMaxSuppression": "TensorRT-RTX 1.7.1 parses NonMaxSuppression but its builder has no "
                             "implementation ('has no runners that implement it')",
    },
}
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Problem:
    """One reason a build would fail or produce something other than what was asked."""

    code: str
    message: str
    fix: str
    node: str | None = None

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.fix}"


@dataclass(frozen=True)
class GraphFeatures:
    """What a build needs to know about a graph (see ``graph_features``)."""

    fp16_tensors: bool
    qdq_nodes: int
    plugin_ops: tuple[tuple[str, str, str], ...]   # (node name, op_type, domain)
    topk: tuple[tuple[str, int | None], ...]       # (node name, constant K or None)
    op_types: frozenset


def check_graph(onnx_model_or_path, flavour, precision: str, *,
                calibrator_available: bool = False) -> list[Problem]:
    """Problems that would make ``build_engine(precision=...)`` fail or mislabel the engine.

    ``onnx_model_or_path`` is an ``onnx.ModelProto`` or a path; ``flavour`` a
    :class:`~harness.trt.flavour.TrtFlavour`.  An empty list means no known problem.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    feats = graph_features(onnx_model_or_path)
    label = flavour.label
    problems: list[Problem] = []

    limit = flavour.topk_max
    for node, k in feats.topk:
        if limit is not None and k is not None and k > limit:
            problems.append(Problem(
                "topk_k_exceeds_limit",
                f"TopK node '{node}' has K={k}, above {label}'s TopK limit {limit} "
                f"(the build fails: 'K exceeds the maximum value allowed ({limit})').",
                f"export with pre_topk <= {limit} (eval.pre_topk) so that every TopK keeps at most "
                f"{limit} candidates", node))

    for node, op, domain in feats.plugin_ops:
        if op in flavour.plugins:
            continue
        where = f" (domain '{domain}')" if domain else ""
        have = ", ".join(sorted(flavour.plugins)) or "none"
        if op in NMS_PLUGINS:
            fix = ("export with nms='none' (decoded boxes; NMS on the host) or nms='onnx', or build "
                   "with " + PLUGIN_AVAILABILITY[op])
        else:
            fix = f"build with a TensorRT whose plugin library registers {op}, or export without it"
        problems.append(Problem(
            "plugin_missing",
            f"node '{node}' is plugin op {op}{where}, which {label}'s plugin registry lacks "
            f"(registered: {have}); the ONNX parser fails with 'Plugin not found'.", fix, node))

    for op, why in UNBUILDABLE_OPS.get(flavour.name, {}).items():
        if op in feats.op_types:
            problems.append(Problem(
                "op_unsupported", f"the graph has {op}: {why}.",
                "export with nms='none' (NMS on the host) for this flavour, or build with NVIDIA "
                "TensorRT 10/11 (INMSLayer)", op))

    if precision == "int8" and not feats.qdq_nodes:
        if flavour.strongly_typed_only:
            problems.append(Problem(
                "int8_needs_qdq",
                f"int8 was requested but the graph has no QuantizeLinear/DequantizeLinear nodes; "
                f"{label} is strongly typed only (no INT8 builder flag, no calibrators), so the "
                f"engine would stay fp32.",
                "quantize the ONNX to explicit Q/DQ first (ModelOpt, or onnxruntime quantize_static "
                "with QDQ, symmetric QInt8 activations and weights, per-channel)"))
        elif not calibrator_available:
            problems.append(Problem(
                "int8_needs_calibration",
                f"int8 was requested for a graph without Q/DQ nodes; {label} then needs an INT8 "
                f"calibrator (implicit quantization), and none was given.",
                "pass calibrator=make_calibrator(...) or quantize the ONNX to Q/DQ"))
    if precision == "fp16" and flavour.strongly_typed_only and not feats.fp16_tensors:
        problems.append(Problem(
            "fp16_needs_fp16_graph",
            f"fp16 was requested but the graph has no float16 tensors; {label} is strongly typed "
            f"only (no FP16 builder flag), so the engine would be fp32.",
            "convert the ONNX to fp16 first (ModelOpt AutoCast, keep_io_types=True) and build that"))
    if precision == "fp32" and (feats.fp16_tensors or feats.qdq_nodes):
        carried = "float16 tensors" if feats.fp16_tensors else f"{feats.qdq_nodes} Q/DQ nodes"
        problems.append(Problem(
            "fp32_graph_not_fp32",
            f"fp32 was requested but the graph carries {carried}; a strongly typed build keeps "
            f"them, so the engine would not be fp32.",
            "build the fp32 ONNX for fp32, or request the precision the graph carries"))
    return problems


def clamp_pre_topk(requested: int, flavour, policy: str = "clamp") -> tuple[int, str | None]:
    """Fit an NMS pre-top-k to the flavour's TopK limit.

    ``flavour`` may be a TrtFlavour, an int limit, or None (TensorRT's documented
    3840, for planning where no TensorRT is installed).  Returns ``(value,
    warning)``: the warning is None when nothing changed.  ``policy='refuse'``
    raises :class:`UserError` instead of clamping.
    """
    from harness.trt.flavour import DOCUMENTED_TOPK_MAX

    if policy not in ("clamp", "refuse"):
        raise UserError(f"unknown pre_topk policy '{policy}': choose clamp or refuse")
    if isinstance(flavour, int):
        limit, label = flavour, "TensorRT"
    elif flavour is None:
        limit, label = DOCUMENTED_TOPK_MAX, "TensorRT"
    else:
        limit, label = flavour.topk_max, flavour.label
    requested = int(requested)
    if requested < 1:
        raise UserError(f"pre_topk must be >= 1, got {requested}")
    if limit is None or requested <= limit:
        return requested, None
    if policy == "refuse":
        raise UserError(f"pre_topk {requested} exceeds TensorRT's TopK limit {limit} ({label}); "
                        f"set eval.pre_topk <= {limit} or policy clamp")
    return limit, (f"pre_topk {requested} clamped to {limit}: TensorRT's TopK limit ({label}); "
                   f"TensorRT results keep at most {limit} candidates per image before NMS")


def nms_variant_problem(nms: str, flavour) -> Problem | None:
    """A variant the flavour cannot have at all, known before any export (BatchedNMS on 11+)."""
    if nms == "batched_nms" and flavour.name == "tensorrt" and flavour.major >= 11:
        return Problem(
            "plugin_removed",
            f"nms='batched_nms' needs BatchedNMSDynamic_TRT, which {flavour.label} does not have: "
            f"the BatchedNMS plugins were deprecated in TensorRT 9.0 and removed in TensorRT 11 "
            f"(only the EfficientNMS variants remain registered).",
            "use nms='onnx' (INMSLayer) or nms='efficient_nms' (deprecated since 10.12), or "
            "build with TensorRT 10.x", "BatchedNMSDynamic_TRT")
    return None


def rotated_nms_problem(nms: str) -> Problem | None:
    """Why a rotated model cannot have NMS variant ``nms`` in its graph (None for ``none``).

    Every in-graph variant detbench exports is axis-aligned (ONNX NonMaxSuppression,
    EfficientNMS_TRT, BatchedNMSDynamic_TRT); rotated NMS in a TensorRT graph is mmdeploy's
    ``TRTBatchedRotatedNMS``, which is absent from every flavour detbench builds with.
    """
    if nms == "none":
        return None
    return Problem(
        "rotated_nms_plugin_absent",
        f"nms '{nms}' is an axis-aligned NMS; a rotated model's in-graph NMS is mmdeploy's TensorRT "
        f"plugin {ROTATED_NMS_PLUGIN}, which is absent (neither NVIDIA TensorRT's plugin library "
        f"nor TensorRT-RTX registers it, and detbench loads no mmdeploy library).",
        "use nms: none for rotated models (decoded rotated boxes, exact rotated NMS on the host), "
        "or exclude these cells", ROTATED_NMS_PLUGIN)


def refuse_rotated_in_graph_nms(cells, source: str) -> None:
    """Plan-time: a rotated cell (``box_type: rotated``) that would run with an in-graph NMS is a
    UserError (one line: the cell, the absent plugin, the fix); statically skipped cells pass."""
    for cell in cells:
        if cell.get("box_type") != "rotated" or cell.get("skip_reason"):
            continue
        problem = rotated_nms_problem(cell.get("nms", "none"))
        if problem is not None:
            raise UserError(f"{source}: cell {cell.get('key', cell.get('model'))}: {problem} "
                            f"(exclude: - {{model: {cell['model']}, nms: {cell['nms']}}})")


def nms_candidate_cap(nms: str, pre_topk: int | None, num_boxes: int, num_classes: int) -> dict:
    """What an in-graph NMS really considers per image, beyond detbench's own pre-top-k.

    Returns ``{"variant", "pre_topk", "boxes_in", "pairs_in", "cap", "cap_unit", "source",
    "binding"}`` where ``pairs_in`` = boxes after the graph's pre-top-k x classes (each box
    enters once per class) and ``binding`` says whether the hidden cap can cut candidates
    (so TensorRT keeps fewer than ONNX Runtime on the same graph).  Empty for ``none``.
    """
    if nms == "none":
        return {}
    wanted = min(int(pre_topk or num_boxes), int(num_boxes))
    boxes_in = min(wanted, BATCHED_NMS_MAX_BOXES) if nms == "batched_nms" else wanted
    pairs = boxes_in * int(num_classes)
    if nms == "onnx":
        cap, unit, source = (INMS_TOPK_BOX_LIMIT, "filtered boxes (box, class) per image",
                             "INMSLayer TopK box limit default (NvInfer.h setTopKBoxLimit; "
                             "2000 on SM 5.3/6.2), never set by TensorRT's ONNX parser")
    elif nms == "efficient_nms":
        cap, unit, source = (EFFICIENT_NMS_SELECTED, "(box, class) scores above score_thr per "
                             "image", "EfficientNMS_TRT numSelectedBoxes (efficientNMSPlugin.cpp; "
                             "README: 4096; 2000 on Jetson TX1/TX2)")
    elif nms == "batched_nms":
        cap, unit, source = (BATCHED_NMS_MAX_BOXES, "input boxes and topK per class",
                             "BatchedNMS README: topK <= 4096, cannot handle more than 4096 input "
                             "boxes")
    else:
        raise UserError(f"unknown nms '{nms}'")
    binding = wanted > cap if nms == "batched_nms" else pairs > cap
    return {"variant": nms, "pre_topk": pre_topk, "boxes_in": boxes_in, "pairs_in": pairs,
            "cap": cap, "cap_unit": unit, "source": source, "binding": bool(binding)}


def nms_cap_warning(info: dict) -> str | None:
    """The per-cell warning for ``nms_candidate_cap``'s result (None when the cap cannot bind)."""
    if not info or not info["binding"]:
        return None
    if info["variant"] == "batched_nms":
        return (f"BatchedNMSDynamic_TRT takes at most {info['cap']} boxes per image: the graph feeds "
                f"it the top {info['boxes_in']} by score ({info['source']})")
    return (f"in-graph NMS '{info['variant']}' considers at most {info['cap']} {info['cap_unit']} "
            f"while the graph gives it up to {info['pairs_in']} ({info['boxes_in']} boxes x classes); "
            f"with a low score_thr TensorRT keeps fewer candidates than ONNX Runtime on the same "
            f"graph, expect lower AP ({info['source']})")


# --------------------------------------------------------------------------- graph reading

def load_model(onnx_model_or_path) -> Any:
    """An ``onnx.ModelProto`` (weights of external-data models are not loaded)."""
    import onnx

    if isinstance(onnx_model_or_path, onnx.ModelProto):
        return onnx_model_or_path
    path = Path(onnx_model_or_path)
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}")
    return onnx.load(str(path), load_external_data=False)


def graph_features(onnx_model_or_path) -> GraphFeatures:
    """Precision markers, plugin ops and TopK constants of the main graph."""
    import onnx
    from onnx import TensorProto

    model = load_model(onnx_model_or_path)
    graph = model.graph
    consts = _Constants(graph)
    fp16 = TensorProto.FLOAT16

    fp16_tensors = any(t.data_type == fp16 for t in graph.initializer)
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == fp16:
            fp16_tensors = True
    qdq = 0
    plugins, topk, op_types = [], [], set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        domain = node.domain or ""
        op_types.add(node.op_type)
        if node.op_type in _QDQ_OPS and domain in _STANDARD_DOMAINS:
            qdq += 1
        if not fp16_tensors and _makes_fp16(node, fp16):
            fp16_tensors = True
        standard = domain in _STANDARD_DOMAINS and onnx.defs.has(node.op_type, "")
        if not standard and domain != "ai.onnx.ml":
            # TensorRT's parser looks any other op up as a plugin, by op_type
            plugins.append((name, node.op_type, domain))
        if node.op_type == "TopK" and domain in _STANDARD_DOMAINS:
            k = None
            if len(node.input) > 1 and node.input[1]:
                value = consts.value(node.input[1])
                if value is not None and value.size == 1:
                    k = int(value.reshape(-1)[0])
            else:
                k = next((int(a.i) for a in node.attribute if a.name == "k"), None)
            topk.append((name, k))
    return GraphFeatures(fp16_tensors, qdq, tuple(plugins), tuple(topk), frozenset(op_types))


class _Constants:
    """Resolve a tensor to a numpy constant through initializers, Constant nodes and
    the small shape ops exporters put around TopK's K (Cast, Reshape, Unsqueeze, Min...)."""

    _PASS = ("Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten")

    def __init__(self, graph):
        from onnx import numpy_helper

        self._np = numpy_helper
        self._values = {t.name: t for t in graph.initializer}
        self._producer = {out: node for node in graph.node for out in node.output}
        self._cache: dict[str, Any] = {}

    def value(self, name: str, depth: int = 0):
        import numpy as np

        if name in self._cache:
            return self._cache[name]
        result = None
        if name in self._values:
            result = self._np.to_array(self._values[name])
        elif depth < 16 and name in self._producer:
            node = self._producer[name]
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        result = self._np.to_array(attr.t)
                    elif attr.name in ("value_int", "value_ints"):
                        result = np.array(attr.i if attr.name == "value_int" else list(attr.ints))
            else:
                inputs = [self.value(i, depth + 1) if i else None for i in node.input]
                if node.op_type in self._PASS and inputs and inputs[0] is not None:
                    result = np.asarray(inputs[0]).reshape(-1)
                elif node.op_type in ("Min", "Max") and inputs and all(v is not None for v in inputs):
                    fn = np.minimum if node.op_type == "Min" else np.maximum
                    result = functools.reduce(fn, inputs)
                elif node.op_type == "Concat" and inputs and all(v is not None for v in inputs):
                    result = np.concatenate([np.asarray(v).reshape(-1) for v in inputs])
        self._cache[name] = result
        return result


def _makes_fp16(node, fp16: int) -> bool:
    """A Cast to float16, or a Constant holding float16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == fp16:
            return True
        if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == fp16:
            return True
    return False
