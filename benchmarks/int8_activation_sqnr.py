"""How much does each quantized activation lose on its own? (#18)

For every activation tensor the fixture's all-int8 Q/DQ graph quantizes (mse calibration on 32
images, no smoothing), the fp32 graph's values on the first 16 images of the sensitivity split
(synth seed 5) are quantized with that tensor's own scale, and the tensor's own SQNR
(signal / quantization error, dB) is reported: the error each quantization point adds before any
propagation.  A wide spread would point at a few bad tensors; a narrow one means the int8 loss is
the sum of many similar points (the rationale of the int8-mixed search's conv-level step).

    PYTHONPATH=$PWD python3 benchmarks/int8_activation_sqnr.py --cache-dir .detbench
"""
from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from _results import write_results
    from int8_mixed_probe import fixture_graph
    from harness.calibration.qdq import session_with_outputs
    from harness.calibration.sensitivity import Evaluator, build_split, sensitivity_images

    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=".detbench")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--card", default="cpu_" + platform.node())
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = ap.parse_args(argv)
    cache = Path(args.cache_dir).resolve()
    ctx, fp32, test_cfg = fixture_graph(cache)
    found, where = sensitivity_images(ctx.cell, cache)
    split = build_split(found, ctx.preprocessor("cpu"), where)
    qdq = Evaluator(fp32, ctx.calibration_set(), "mse", 99.99, cache, split, test_cfg).graph(())
    q = onnx.load(str(qdq))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    scales = {n.input[0]: float(inits[n.input[1]]) for n in q.graph.node
              if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    names = list(scales)
    x = np.concatenate([b[0] for b in split.batches])[:args.images]
    values = dict(zip(names, session_with_outputs(onnx.load(str(fp32)), names).run(names, {"images": x})))
    rows = []
    for name in names:
        v = values[name].astype(np.float64)
        err = v - np.clip(np.round(v / scales[name]), -128, 127) * scales[name]
        rows.append({"tensor": name, "sqnr_db": float(10 * np.log10((v ** 2).sum() / max((err ** 2).sum(), 1e-30))),
                     "threshold": scales[name] * 127, "max_abs": float(np.abs(v).max())})
    rows.sort(key=lambda r: r["sqnr_db"])
    inner = [r["sqnr_db"] for r in rows if r["tensor"] != "images"]
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    doc = {"benchmark": "own SQNR of each quantized activation (#18)", "date": date, "host": platform.node(),
           "images": len(x), "split": where, "rows": rows,
           "summary": {"tensors": len(inner), "min_db": min(inner), "median_db": float(np.median(inner)),
                       "max_db": max(inner)}}
    s = doc["summary"]
    lines = [f"# Own SQNR of each quantized activation — fixture, {date}, {platform.node()}", "",
             f"All-int8 Q/DQ graph (mse × 32, no smoothing); fp32 values of the first {len(x)} images of the "
             f"sensitivity split ({where}) quantized with each tensor's own scale. "
             f"{s['tensors']} activation tensors (the image input aside): SQNR {s['min_db']:.1f}–{s['max_db']:.1f} dB, "
             f"median {s['median_db']:.1f} dB.", "", "| tensor | own SQNR dB | threshold | max |x| |", "|---|---|---|---|"]
    lines += [f"| `{r['tensor']}` | {r['sqnr_db']:.1f} | {r['threshold']:.3f} | {r['max_abs']:.3f} |" for r in rows]
    lines += ["", "Command: `PYTHONPATH=$PWD python3 benchmarks/int8_activation_sqnr.py --cache-dir .detbench`"]
    write_results(Path(args.out), "int8_activation_sqnr", args.card, date, doc, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
