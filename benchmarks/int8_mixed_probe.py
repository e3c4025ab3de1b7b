"""Where could int8-mixed's missing AP come from? (#18) Two probes on the fixture, ONNX Runtime CPU.

1. Calibration: the all-int8 graph's ΔAP vs fp32 for each method × calibration size, on the
   sensitivity split (synth seed 5, 256 images) and the evaluation split (synth seed 2, 300
   images), each with its paired-bootstrap SE and 95 % CI (500 resamples, seed 0).
2. Tensor error: the Convs with the lowest output SQNR in the fully quantized graph (mse, 32
   images; 16 sensitivity images), and the sensitivity-split ΔAP when the lowest-SQNR Convs are
   kept float up to 5 / 10 / 15 / 20 % of conv FLOPs.

Every evaluation goes through detbench's sensitivity Evaluator (cached in --cache-dir), so a
second run after benchmarks/int8_mixed.py costs little.

    PYTHONPATH=$PWD python3 benchmarks/int8_mixed_probe.py --cache-dir .detbench
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
POINTS = [("minmax", 32), ("mse", 32), ("minmax", 256), ("mse", 256), ("mse", 512), ("percentile", 256)]
BOOT = {"samples": 500, "seed": 0, "level": 0.95}


def _cell(cache: Path, method: str, images: int) -> dict:
    from harness import matrix as mx
    from harness.data.datasets import resolve_dataset

    fixture = ROOT / "fixtures/yolov8_synth"
    m = mx.parse({"models": [{"name": "yolov8_synth", "config": str(fixture / "config.py"),
                              "checkpoint": str(fixture / "yolov8_synth.pth")}],
                  "backends": ["onnxruntime"], "precisions": ["fp32"], "image_sizes": [320], "devices": ["cpu"],
                  "dataset": {"synth": {"images": 300, "seed": 2, "size": 320}},
                  "calibration": {"images": images, "method": method, "seed": 3, "sensitivity_images": 256,
                                  "sensitivity_seed": 5}})
    return {**mx.expand(m)[0], "dataset": resolve_dataset(m.dataset, cache)}


def fixture_graph(cache: Path, method: str = "mse", images: int = 32):
    """(cell context, fp32 ONNX path, post-processing test_cfg) of the fixture's ORT cell."""
    from harness.backends.onnxruntime import OnnxRuntimeRunner
    from harness.runner.context import CellContext

    cell = _cell(cache, method, images)
    ctx = CellContext(cell, cache, cache)
    runner = OnnxRuntimeRunner(cell, ctx)
    runner.load()
    onnx_path, test_cfg = Path(runner.info.artifacts["onnx"]), runner.test_cfg
    runner.close()
    return ctx, onnx_path, test_cfg


def _interval(d: dict) -> dict:
    return {k: d[k] for k in ("delta_ap", "se", "ci_low", "ci_high")}


def main(argv=None) -> int:
    import numpy as np
    import onnx

    from harness.calibration.sensitivity import (Evaluator, _conv_outputs, build_split, conv_flops,
                                                 layer_groups, sensitivity_images, sqnr_db)
    from harness.data.coco import CocoDataset
    from harness.runner.context import CellContext

    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=".detbench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/int8_mixed_probe"))
    args = ap.parse_args(argv)
    cache = Path(args.cache_dir).resolve()
    ctx, onnx_path, test_cfg = fixture_graph(cache)
    cell = ctx.cell
    pre = ctx.preprocessor("cpu")
    found, where = sensitivity_images(cell, cache)
    sens = build_split(found, pre, where)
    ds = ctx.dataset
    evaluation = build_split(CocoDataset(ds.ann_file, tuple(ds.images), ds.category_ids, ds.category_names),
                             pre, "evaluation split")

    def evaluator(calib, method, split):
        ev = Evaluator(onnx_path, calib, method, 99.99, cache, split, test_cfg)
        ev.bootstrap = dict(BOOT)
        return ev

    calibration = []
    for method, images in POINTS:
        calib = CellContext(_cell(cache, method, images), cache, cache).calibration_set()
        calibration.append({"method": method, "images": images,
                            "sensitivity": _interval(evaluator(calib, method, sens).delta(frozenset())),
                            "evaluation": _interval(evaluator(calib, method, evaluation).delta(frozenset()))})
        print(json.dumps(calibration[-1]), flush=True)

    calib = ctx.calibration_set()
    ev = evaluator(calib, "mse", sens)
    model = onnx.load(str(onnx_path))
    flops = conv_flops(model, 320)
    total = sum(flops.values())
    group_of = {n: g for g, nodes in layer_groups(model).items() for n in nodes}
    x = np.concatenate([b[0] for b in sens.batches])[:16]
    ref, got = _conv_outputs(onnx_path, list(flops), x), _conv_outputs(ev.graph(()), list(flops), x)
    sqnr = {n: sqnr_db(ref[n], got[n]) for n in flops}
    order = sorted(flops, key=lambda n: sqnr[n])
    worst = [{"conv": n, "group": group_of.get(n), "sqnr_db": sqnr[n], "flops_fraction": flops[n] / total}
             for n in order[:15]]
    guided = []
    for share in (0.05, 0.10, 0.15, 0.20):
        kept, acc = [], 0.0
        for n in order:
            if acc + flops[n] / total <= share + 1e-9:
                kept.append(n)
                acc += flops[n] / total
        guided.append({"float_share_limit": share, "float_flops_fraction": acc, "convs": len(kept),
                       "sensitivity": _interval(ev.delta(frozenset(kept)))})
        print(json.dumps(guided[-1]), flush=True)

    result = {"benchmark": "int8-mixed probes on the fixture", "date": datetime.now(timezone.utc).isoformat(),
              "host": platform.node(), "device": "CPU only (no GPU), ONNX Runtime CPU EP",
              "bootstrap": BOOT, "sensitivity_split": f"{where} (256 images)",
              "evaluation_split": "synth seed 2 (300 images)", "calibration": calibration,
              "lowest_sqnr_convs": worst, "sqnr_guided_float_sets": guided}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))

    def iv(d):
        return f"{d['delta_ap']:+.4f} ± {d['se']:.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"

    lines = [f"# int8-mixed probes on the fixture ({result['date'][:10]}, {result['host']}, CPU only)", "",
             "yolov8_synth 320 px, ONNX Runtime CPU EP, TensorRT-style symmetric Q/DQ (per-channel weights, "
             "no quantized bias). ΔAP vs the fp32 graph on the same images, ± SE [95 % CI] from a paired "
             "bootstrap over images (500 resamples, seed 0). Sensitivity split: synth seed 5, 256 images; "
             "evaluation split: synth seed 2, 300 images; calibration images: synth seed 3.", "",
             "## 1. All-int8 ΔAP per calibration method and size", "",
             "| method | images | ΔAP sensitivity split | ΔAP evaluation split |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['images']} | {iv(r['sensitivity'])} | {iv(r['evaluation'])} |"
              for r in calibration]
    lines += ["", "## 2. Lowest-SQNR Convs (fully quantized graph, mse × 32) and keeping them float", "",
              "| conv | group | SQNR dB | conv FLOPs |", "|---|---|---|---|"]
    lines += [f"| `{w['conv']}` | {w['group']} | {w['sqnr_db']:.1f} | {w['flops_fraction']:.2%} |" for w in worst]
    lines += ["", "| float up to | float FLOPs | convs | ΔAP sensitivity split |", "|---|---|---|---|"]
    lines += [f"| {g['float_share_limit']:.0%} | {g['float_flops_fraction']:.1%} | {g['convs']} | "
              f"{iv(g['sensitivity'])} |" for g in guided]
    lines += ["", f"Command: `PYTHONPATH=$PWD python3 benchmarks/int8_mixed_probe.py --cache-dir .detbench`"]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
