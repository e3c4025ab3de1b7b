"""Calibration study (#18): COCO AP of the fixture's int8 Q/DQ graph per method x calibration size.

Methods minmax / entropy / percentile / mse, calibration sets of 32 / 128 / 512 images (synthetic
split, seed 3: not the evaluation split), each evaluated with ONNX Runtime CPU on the fixture's
evaluation split (100 images, seed 2, 320 px) through mmyolo's post-processing, against the fp32
graph on the same images.  Everything is cached under --cache-dir (ranges, Q/DQ graphs, AP).

    PYTHONPATH=$PWD python3 benchmarks/int8_calibration_study.py --cache-dir .detbench \
        --out benchmarks/results/int8_calibration_study
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=".detbench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/int8_calibration_study"))
    ap.add_argument("--methods", default="minmax,entropy,percentile,mse")
    ap.add_argument("--sizes", default="32,128,512")
    ap.add_argument("--eval-images", type=int, default=100)
    args = ap.parse_args(argv)

    from harness import matrix as mx
    from harness.calibration.data import build_calibration_set
    from harness.calibration.qdq import quantize_qdq
    from harness.calibration.sensitivity import Evaluator, build_split
    from harness.data.coco import CocoDataset
    from harness.data.datasets import resolve_dataset, synth_dataset
    from harness.export.loader import export_for_cell
    from harness.runner.context import CellContext

    cache = Path(args.cache_dir).resolve()
    m, _ = mx.load(ROOT / "matrices/demo.yaml")
    m.dataset.synth.images = args.eval_images
    ds = resolve_dataset(m.dataset, cache)
    cell = next(c for c in mx.expand(m) if c["backend"] == "onnxruntime" and c["precision"] == "int8")
    cell["dataset"] = ds
    ctx = CellContext(cell, cache, cache)
    model = ctx.build_model("cpu")
    onnx_path, _ = export_for_cell(ctx, model)
    test_cfg = ctx.mm_test_cfg(model.bbox_head.test_cfg)
    pre = ctx.preprocessor("cpu")
    evaluation = CocoDataset.load(ds["images"], ds["annotations"], ds.get("limit"))
    split = build_split(evaluation, pre, f"evaluation split synth seed {m.dataset.synth.seed}")
    sizes = [int(s) for s in args.sizes.split(",")]
    calib_dir, _ = synth_dataset(max(sizes), m.calibration.seed, m.dataset.synth.size, cache)
    files = sorted(Path(calib_dir).glob("*.png"))
    rows, fp32_ap = [], None
    for size in sizes:
        calib = build_calibration_set(files[:size], pre, 8, f"synth seed {m.calibration.seed}")
        for method in args.methods.split(","):
            t0 = time.time()
            ev = Evaluator(onnx_path, calib, method, 99.99, cache, split, test_cfg)
            if fp32_ap is None:
                fp32_ap = ev.evaluate(None)["ap"]
            _, info = quantize_qdq(onnx_path, calib, method, 99.99, cache)
            result = ev.evaluate(frozenset())
            rows.append({"method": method, "calibration_images": size, "ap": result["ap"],
                         "delta_ap": result["ap"] - fp32_ap, "scores_sqnr_db": result.get("scores_sqnr_db"),
                         "boxes_sqnr_db": result.get("boxes_sqnr_db"), "scales_sha256": info["scales_sha256"],
                         "seconds": round(time.time() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
            _write(args, split, fp32_ap, rows)  # after every row: a long study keeps what it measured
    return 0


def _write(args, split, fp32_ap, rows) -> None:
    same = {}
    for r in rows:
        same.setdefault((r["calibration_images"], r["scales_sha256"]), []).append(r["method"])
    out = {"study": "int8 calibration: method x size", "date": datetime.now(timezone.utc).isoformat(),
           "host": platform.node(), "cpu": platform.processor() or platform.machine(),
           "backend": "onnxruntime CPU EP, TensorRT-style symmetric Q/DQ (per-channel weights)",
           "model": "fixtures/yolov8_synth, 320 px", "evaluation": split.source, "eval_images": split.images,
           "fp32_ap": fp32_ap, "rows": rows,
           "identical_scales": [v for v in same.values() if len(v) > 1]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    lines = [f"# int8 calibration study ({out['date'][:10]}, {out['host']}, CPU only)", "",
             f"{out['model']}; {out['backend']}; AP on the {split.source} ({split.images} images); "
             f"fp32 AP {fp32_ap:.4f}.", "",
             "| method | images | AP | ΔAP vs fp32 | scores SQNR dB |", "|---|---|---|---|---|"]
    for r in rows:
        sq = "—" if r["scores_sqnr_db"] is None else f"{r['scores_sqnr_db']:.1f}"
        lines.append(f"| {r['method']} | {r['calibration_images']} | {r['ap']:.4f} | {r['delta_ap']:+.4f} | {sq} |")
    if out["identical_scales"]:
        lines += ["", f"Methods with identical scales (same size): {out['identical_scales']}"]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
