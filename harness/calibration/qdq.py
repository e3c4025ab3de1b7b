"""int8 by explicit Q/DQ: one calibrated ONNX serves ONNX Runtime and TensorRT 11.

Settings are the ones TensorRT accepts (symmetric int8 activations and
weights, per-channel weights, no quantized bias, Q/DQ only around Conv
inputs): ONNX Runtime's defaults (uint8 asymmetric activations, int32 bias)
are rejected by TensorRT's parser.  The tensor ranges are computed here with
the calibrator options each method really needs — ``quantize_static`` alone
runs entropy with 128 bins, which yields exactly the min/max scales — and kept
as a calibration cache reused across runs and hashed into provenance.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from harness import cache
from harness.measure.provenance import file_hash

SETTINGS = {"quant_format": "QDQ", "activation_type": "QInt8", "weight_type": "QInt8",
            "per_channel": True, "op_types_to_quantize": ["Conv"],
            "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True,
                              "QuantizeBias": False,
                              "OpTypesToExcludeOutputQuantization": ["Conv"]}}
HIST_OPTIONS = {"num_bins": 2048, "num_quantized_bins": 128, "symmetric": True}


def quantize_qdq(fp32_onnx: Path, calib, method: str, percentile: float, cache_dir: Path,
                 input_name: str = "images", exclude: tuple[str, ...] = (),
                 smoothing: float | None = None) -> tuple[Path, dict]:
    """The Q/DQ int8 model for (ONNX, calibration data, method), built once and cached.

    ``input_name``: the graph's image input (a user's ONNX model names it its own way).
    ``exclude``: Conv node names left in float (no Q/DQ around them) — the
    mixed-precision graph; the tensor ranges are the same calibration cache.
    ``smoothing``: α of :mod:`harness.calibration.smoothing` (None: off); the Q/DQ graph is
    then built from the smoothed fp32 graph, whose hash keys every cache below.
    """
    import onnxruntime

    smoothed = {}
    if smoothing is not None:
        from harness.calibration.smoothing import smooth_graph

        fp32_onnx, smoothed = smooth_graph(fp32_onnx, calib, smoothing, cache_dir, input_name)

    opts = {"method": method, **({"percentile": percentile} if method == "percentile" else {})}
    key = hashlib.sha256(json.dumps([file_hash(fp32_onnx), calib.sha256, opts, SETTINGS,
                                     onnxruntime.__version__]).encode()).hexdigest()[:20]
    folder = Path(cache_dir) / "int8"
    ranges = cache.cached(folder / f"{key}.calib.json",
                          lambda staged: _write_ranges(fp32_onnx, calib, method, percentile, staged,
                                                       input_name))
    exclude = tuple(sorted(set(exclude)))
    if exclude:
        mixed = hashlib.sha256(json.dumps([key, exclude]).encode()).hexdigest()[:20]
        target = folder / "mixed" / f"{mixed}.qdq.onnx"
    else:
        target = folder / f"{key}.qdq.onnx"
    out = cache.cached(target, lambda staged: _quantize(fp32_onnx, method, ranges, staged, exclude))
    info = {"calibration_method": method, **opts, "calibration_images": calib.images,
            "calibration_source": calib.source, "calibration_data_sha256": calib.sha256,
            "calibration_cache": str(ranges), "calibration_cache_sha256": file_hash(ranges),
            "scales_sha256": scales_hash(ranges), "qdq_onnx_sha256": file_hash(out),
            "quantizer": f"onnxruntime.quantization {onnxruntime.__version__}", "settings": SETTINGS,
            **smoothed}
    return out, info


def scales_hash(ranges_path: Path) -> str:
    """Hash of the tensor ranges alone: equal hashes mean two methods chose identical scales."""
    data = json.loads(Path(ranges_path).read_text())
    data.pop("calibration_method", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _method_enum(method: str):
    from onnxruntime.quantization import CalibrationMethod

    # mse: detbench picks the thresholds from Percentile's |x| histograms (mse_thresholds) and
    # hands them to the quantizer as plain ranges
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile, "mse": CalibrationMethod.MinMax}[method]


def mse_thresholds(histograms: dict) -> dict:
    """Per tensor, the symmetric int8 clipping threshold with the least expected squared error.

    ``histograms``: ONNX Runtime's |x| histograms ``{name: (counts, edges, min, max)}``.  Each
    candidate threshold T (every 8th bin edge) quantizes the bin centres with scale T/127,
    clipping beyond T; the error is weighted by the bin counts.  ONNX Runtime has no MSE
    calibrator; this is the method TensorRT's pytorch-quantization toolkit calls ``mse``.
    """
    import numpy as np

    out = {}
    for name, (counts, edges, *_rest) in histograms.items():
        counts = np.asarray(counts, dtype=np.float64)
        edges = np.asarray(edges, dtype=np.float64)
        centres = (edges[:-1] + edges[1:]) / 2
        candidates = edges[8::8] if len(edges) > 8 else edges[1:]
        candidates = candidates[candidates > 0]
        if not len(candidates) or counts.sum() == 0:
            top = float(edges[-1]) if len(edges) else 0.0
            out[name] = (np.array(-top, dtype=np.float32), np.array(top, dtype=np.float32))
            continue
        scale = candidates[:, None] / 127.0
        q = np.minimum(np.round(centres[None, :] / scale), 127) * scale
        err = ((centres[None, :] - q) ** 2 * counts[None, :]).sum(axis=1)
        t = float(candidates[int(np.argmin(err))])
        out[name] = (np.array(-t, dtype=np.float32), np.array(t, dtype=np.float32))
    return out


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, batches, input_name: str = "images"):
        self._it = iter(batches)
        self.input_name = input_name

    def get_next(self):
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}


def _write_ranges(fp32_onnx: Path, calib, method: str, percentile: float, ranges: Path,
                  input_name: str = "images") -> None:
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData

    extra = {} if method == "minmax" else dict(HIST_OPTIONS)
    if method == "percentile":
        extra["percentile"] = percentile
    collect = CalibrationMethod.Percentile if method == "mse" else _method_enum(method)
    with tempfile.TemporaryDirectory(prefix="detbench-calib-") as tmp:
        model = _runnable_part(Path(fp32_onnx), Path(tmp))
        calibrator = create_calibrator(model, SETTINGS["op_types_to_quantize"],
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=collect, extra_options=extra)
        calibrator.collect_data(_Reader(calib.batches, input_name))
        if method == "mse":
            data = TensorsData(CalibrationMethod.MinMax,
                               mse_thresholds(calibrator.collector.get_histogram_dict()))
        else:
            data = calibrator.compute_data()
        tmp_ranges = Path(tmp) / "ranges.json"
        save_tensors_data(data, tmp_ranges)
        shutil.move(str(tmp_ranges), ranges)


def session_with_outputs(model, tensors, optimize: bool = True):
    """An ONNX Runtime CPU session of ``model`` (an ``onnx.ModelProto``, not changed) that also
    returns the named intermediate ``tensors``; ``optimize=False`` runs the graph node by node
    (Q/DQ pairs as plain fake quantization, nothing fused away)."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _runnable_part(fp32_onnx: Path, tmp: Path) -> Path:
    """The graph ONNX Runtime can execute for calibration.

    A TensorRT plugin node (EfficientNMS_TRT, BatchedNMSDynamic_TRT) has no
    ONNX Runtime kernel, so calibration runs on the sub-graph that feeds it;
    every quantized Conv lies there, and ``quantize_static`` then applies the
    cached ranges to the full graph without executing it.
    """
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(fp32_onnx))
    plugins = [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]
    if not plugins:
        return fp32_onnx
    feeds = [name for n in plugins for name in n.input if name]
    sub = Extractor(model).extract_model([i.name for i in model.graph.input], feeds)
    path = tmp / "calibration_subgraph.onnx"
    onnx.save(sub, str(path))
    return path


def _quantize(fp32_onnx: Path, method: str, ranges: Path, out: Path, exclude: tuple = ()) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    tmp = out.with_name(f"{out.name}.tmp.onnx")
    quantize_static(str(fp32_onnx), str(tmp), None, quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=SETTINGS["op_types_to_quantize"],
                    calibrate_method=_method_enum(method),
                    extra_options=dict(SETTINGS["extra_options"]), calibration_cache_path=str(ranges),
                    nodes_to_exclude=list(exclude))
    tmp.rename(out)
