"""Activation smoothing before int8 Q/DQ (``calibration.smoothing: α``), TensorRT-compatible.

TensorRT quantizes activations per tensor.  A Conv input whose channels span very different
ranges then spends its 8 bits on the widest channels, and the narrow ones are quantized
coarsely.  SmoothQuant (Xiao et al., 2023) moves that spread into the weights, which are
quantized per output channel and lose little: for each quantized Conv, with ``s_c =
max|x_c|^α / max|W[:, c]|^(1−α)`` over the calibration images,

    Conv(x, W)  ==  Conv(x · (1/s), W · s)        (exact in float, per input channel c)

This module rewrites the **fp32** graph that way: a ``Mul`` by the constant ``1/s`` in front of
each Conv's input and the Conv's weight scaled by ``s``.  The standard Q/DQ step then calibrates
and quantizes the ``Mul``'s output, so every calibration method still applies and the result
keeps detbench's TensorRT settings (symmetric per-tensor activations, per-channel weights, float
bias).  In TensorRT the ``Mul`` is a per-channel pointwise op ahead of the ``QuantizeLinear``.

α = 0 keeps the activations as they are and only rescales the weights' input channels; α = 1
equalizes the activation channels completely.  A Conv whose input is a graph input (the image),
a grouped Conv, or a Conv whose weight is not a constant initializer is left as it is.

The smoothed graph is a pure function of (fp32 graph, calibration images, α): it is cached
under ``<cache>/int8/smooth/`` keyed by their hashes.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from harness import cache
from harness.errors import UserError
from harness.fileio import atomic_write
from harness.measure.provenance import file_hash

VERSION = "smooth-v1"


def smooth_graph(fp32_onnx: Path, calib, alpha: float, cache_dir: Path,
                 input_name: str = "images") -> tuple[Path, dict]:
    """The smoothed fp32 graph for (graph, calibration data, α), built once; and its facts."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"smoothing alpha {alpha} is outside [0, 1]")
    key = hashlib.sha256(json.dumps([file_hash(fp32_onnx), calib.sha256, float(alpha), VERSION])
                         .encode()).hexdigest()[:20]
    folder = Path(cache_dir) / "int8" / "smooth"
    facts_path = folder / f"{key}.json"

    def build(staged: Path) -> None:
        facts = _smooth(Path(fp32_onnx), calib, float(alpha), staged, input_name)
        atomic_write(facts_path, json.dumps(facts).encode())

    out = cache.cached(folder / f"{key}.onnx", build)
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else {}
    return out, {"smoothing": {"alpha": float(alpha), "method": "SmoothQuant-style per-channel migration "
                               "(Mul before each quantized Conv, weights scaled per input channel)",
                               **facts, "smoothed_onnx_sha256": file_hash(out)}}


def migration_scales(act_max, weight_max, alpha: float):
    """Per input channel ``s`` (geometric mean 1); 1 where a channel never fired or has no weight."""
    import numpy as np

    act_max = np.asarray(act_max, dtype=np.float64)
    weight_max = np.asarray(weight_max, dtype=np.float64)
    live = (act_max > 0) & (weight_max > 0)
    s = np.ones_like(act_max)
    if live.any():
        s[live] = act_max[live] ** alpha / weight_max[live] ** (1.0 - alpha)
        s[live] /= np.exp(np.mean(np.log(s[live])))  # keeps the tensor's overall magnitude
    return s.astype(np.float32)


def _candidates(model, input_names: set[str]) -> list:
    """The Convs this rewrite applies to: activation input, group 1, constant weight."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.input[0] in input_names or node.input[0] in inits or group != 1 or node.input[1] not in inits:
            continue
        out.append(node)
    return out


def _channel_max(model_path: Path, tensors: list[str], batches, input_name: str) -> dict:
    """max |x| per channel (axis 1) of each tensor over the calibration batches."""
    import numpy as np
    import onnx

    from harness.calibration.qdq import session_with_outputs

    sess = session_with_outputs(onnx.load(str(model_path)), tensors)
    out: dict = {}
    for batch in batches:
        for name, value in zip(tensors, sess.run(tensors, {input_name: batch})):
            axes = tuple(i for i in range(value.ndim) if i != 1)
            m = np.abs(value).max(axis=axes)
            out[name] = m if name not in out else np.maximum(out[name], m)
    return out


def _smooth(fp32_onnx: Path, calib, alpha: float, out: Path, input_name: str) -> dict:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from harness.calibration.qdq import _runnable_part

    model = onnx.load(str(fp32_onnx))
    convs = _candidates(model, {i.name for i in model.graph.input})
    if not convs:
        raise UserError(f"calibration.smoothing: {fp32_onnx.name} has no Conv with an activation input "
                        "and a constant weight to smooth; leave calibration.smoothing unset for this model")
    with tempfile.TemporaryDirectory(prefix="detbench-smooth-") as tmp:
        act = _channel_max(_runnable_part(fp32_onnx, Path(tmp)), sorted({c.input[0] for c in convs}),
                           calib.batches, input_name)
    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    muls: dict[int, object] = {}
    spread_before, spread_after = [], []
    for conv in convs:
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float32)
        a = act[conv.input[0]]
        if a.shape[0] != w.shape[1]:
            continue  # not an (N, C, ...) activation matching the weight's input channels
        s = migration_scales(a, np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != 1)), alpha)
        live = a > 0
        if live.any():
            spread_before.append(float(a[live].max() / np.median(a[live])))
            scaled = a[live] / s[live]
            spread_after.append(float(scaled.max() / np.median(scaled)))
        shape = [1, -1] + [1] * (w.ndim - 2)
        inv_name, mul_out = f"{conv.name}/smooth_inv_scale", f"{conv.name}/smooth_out"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).reshape(shape).astype(np.float32), inv_name))
        muls[id(conv)] = helper.make_node("Mul", [conv.input[0], inv_name], [mul_out], name=f"{conv.name}/smooth_mul")
        w_name = f"{conv.name}/smooth_weight"
        model.graph.initializer.append(numpy_helper.from_array(w * s.reshape(shape), w_name))
        users[conv.input[1]] -= 1
        conv.input[0], conv.input[1] = mul_out, w_name
    nodes = []
    for node in model.graph.node:
        if id(node) in muls:
            nodes.append(muls[id(node)])
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    unused = [i for i in model.graph.initializer if users.get(i.name, 1) == 0]
    for init in unused:
        model.graph.initializer.remove(init)
    onnx.checker.check_model(model)
    with open(out, "wb") as f:
        f.write(model.SerializeToString())
    return {"smoothed_convs": len(muls),
            "activation_channel_spread_median_before": float(np.median(spread_before)) if spread_before else None,
            "activation_channel_spread_median_after": float(np.median(spread_after)) if spread_after else None}
