"""#18 on the lent GPU: fp16, int8 and int8-mixed on ONNX Runtime's CUDA EP, from the returned store.

benchmarks/run_gpu_int8.sh runs matrices/int8_gpu.yaml on the GPU machine and brings back
int8_gpu.db; this script (any machine) writes benchmarks/results/int8_gpu_<card>_<date>.{json,md}:
AP, ΔAP vs the CUDA EP's fp32 cell, median / p99 model latency and the speed-up of each precision
over fp32, the mix (float groups, share of conv FLOPs still int8) and the attribution of the int8
cell's ΔAP, with the card's name and the run's date.  It says plainly whether the CUDA EP gains
anything from the Q/DQ graph.

    PYTHONPATH=$PWD python3 benchmarks/int8_gpu.py --db sqlite:///benchmarks/results/int8_gpu.db
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
#: int8 must be at least this much faster than fp32 (median) to count as a gain from Q/DQ
GAIN = 0.95
TARGET_DAP, TARGET_FLOPS = -0.003, 0.80


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default=f"sqlite:///{ROOT / 'benchmarks/results/int8_gpu.db'}")
    ap.add_argument("--run-id", default="latest")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--suffix", default="", help="appended to the file stem (a second run of the same day)")
    args = ap.parse_args(argv)

    from harness.calibration.attribution import lines as attribution_lines
    from harness.calibration.sensitivity import float_text
    from harness.store import Store

    with Store(args.db, readonly=True) as store:
        run = store.get_run(args.run_id)
        cells = {c.precision: c for c in store.cells(run.id)}
    fp32 = cells["fp32"]
    card = (fp32.provenance or {}).get("gpu_name") or "unknown GPU"
    date = run.created_at.strftime("%Y-%m-%d")
    rows = []
    for precision in ("fp32", "fp16", "int8", "int8-mixed"):
        c = cells.get(precision)
        if c is None:
            continue
        lat, prov = c.latency or {}, c.provenance or {}
        row = {"precision": precision, "key": c.key, "status": c.status, "error": c.error,
               "AP": (c.metrics or {}).get("AP"), "median_ms": lat.get("median_ms"), "p99_ms": lat.get("p99_ms"),
               "cv": lat.get("cv"), "providers": prov.get("providers"), "timer": lat.get("timer")}
        if c.status == "ok" and fp32.status == "ok":
            row["delta_ap_vs_fp32"] = row["AP"] - fp32.metrics["AP"]
            row["speedup_vs_fp32"] = fp32.latency["median_ms"] / row["median_ms"]
        mix = prov.get("int8_mixed")
        if mix:
            row["mix"] = {**{k: mix[k] for k in ("ap_budget", "met", "kept_float_groups", "int8_conv_flops_fraction",
                                                 "sensitivity_delta_ap")}, "float": float_text(mix),
                          "source": mix.get("source")}
        if prov.get("int8_attribution"):
            row["attribution"] = attribution_lines(prov["int8_attribution"])
        rows.append(row)
    by = {r["precision"]: r for r in rows}
    verdict = _verdict(by)
    env = run.environment or {}
    result = {"benchmark": "#18: fp16 / int8 / int8-mixed on ONNX Runtime's CUDA execution provider",
              "card": card, "gpu_uuid": (fp32.provenance or {}).get("gpu_uuid"),
              "driver": (fp32.provenance or {}).get("driver"), "date": run.created_at.isoformat(),
              "run_id": run.id, "git_sha": run.git_sha, "matrix": "matrices/int8_gpu.yaml",
              "onnxruntime": (fp32.provenance or {}).get("onnxruntime"),
              "torch": (fp32.provenance or {}).get("torch"), "cpu": env.get("cpu"),
              "verdict": verdict, "cells": rows,
              "evaluation_images": (((fp32.params or {}).get("dataset") or {}).get("synth") or {}).get("images"),
              "calibration": (fp32.params or {}).get("calibration")}
    stem = f"int8_gpu_{re.sub(r'[^a-z0-9]+', '_', card.lower()).strip('_')}_{date}{args.suffix}"
    out = Path(args.out_dir)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    (out / f"{stem}.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


def _verdict(by: dict) -> dict:
    out = {}
    fp32, int8, mixed = by.get("fp32"), by.get("int8"), by.get("int8-mixed")
    if fp32 and int8 and int8.get("speedup_vs_fp32") is not None:
        gain = int8["speedup_vs_fp32"] >= 1 / GAIN
        out["qdq_gain"] = gain
        out["qdq_sentence"] = (
            f"the CUDA EP gains {'something' if gain else 'nothing'} from the Q/DQ graph: int8 median "
            f"{int8['median_ms']:.2f} ms vs fp32 {fp32['median_ms']:.2f} ms "
            f"({int8['speedup_vs_fp32']:.2f}× fp32's speed)"
            + ("" if gain else "; the CUDA EP has no int8 convolution kernel (no QLinearConv: "
               "microsoft/onnxruntime#12229, #24807), so the graph's QuantizeLinear/DequantizeLinear "
               "pairs run as extra kernels around float convolutions: int8 speed needs TensorRT "
               "(or ORT's TensorRT EP); the CUDA EP only measures int8's accuracy"))
    if fp32 and mixed and mixed.get("delta_ap_vs_fp32") is not None and mixed.get("mix"):
        frac = mixed["mix"]["int8_conv_flops_fraction"]
        out["mixed_target"] = f"ΔAP >= {TARGET_DAP} with >= {TARGET_FLOPS:.0%} of conv FLOPs int8"
        out["mixed_met"] = mixed["delta_ap_vs_fp32"] >= TARGET_DAP and frac >= TARGET_FLOPS
    return out


def _markdown(r: dict) -> str:
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    lines = [f"# fp16 / int8 / int8-mixed on ONNX Runtime's CUDA EP — {r['card']}, {r['date'][:10]}", "",
             f"Run `{r['run_id']}` of `{r['matrix']}` (git `{(r['git_sha'] or '')[:10]}`): fixture yolov8_synth "
             f"320 px, batch 1, AP on the {r.get('evaluation_images') or '?'}-image evaluation split (synth seed 2); "
             f"calibration {(r.get('calibration') or {}).get('method')} on {(r.get('calibration') or {}).get('images')} "
             f"images, smoothing α {(r.get('calibration') or {}).get('smoothing')}; ONNX Runtime "
             f"{r['onnxruntime']}, torch {r['torch']}, driver {r['driver']}, GPU {r['gpu_uuid']}. "
             "Latency: model time per batch, CUDA events on ORT's stream (I/O binding).", "",
             "| precision | status | AP | ΔAP vs fp32 | median ms | p99 ms | CV | speed-up vs fp32 | providers |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in r["cells"]:
        lines.append(f"| {c['precision']} | {c['status']} | {f(c['AP'], '.4f')} | "
                     f"{f(c.get('delta_ap_vs_fp32'), '+.4f')} | {f(c['median_ms'], '.3f')} | "
                     f"{f(c['p99_ms'], '.3f')} | {f(c['cv'], '.1%')} | {f(c.get('speedup_vs_fp32'), '.2f')}× | "
                     f"{', '.join(c['providers'] or []) or '—'} |")
    v = r["verdict"]
    lines += [""]
    noisy = [c for c in r["cells"] if (c.get("cv") or 0) > 0.10]
    if noisy:
        worst = max(c["cv"] for c in noisy)
        lines.append(f"**Noise:** {', '.join(c['precision'] for c in noisy)} flagged unstable (latency CV up "
                     f"to {worst:.1%}): speed differences of that order between cells are not "
                     "significant. At batch 1 this small 320 px model is most likely launch-bound (as eager "
                     "yolov8_n is on this card, README.md), so its latency counts kernels more than arithmetic.")
    if "qdq_sentence" in v:
        lines.append(f"**Q/DQ on the CUDA EP:** {v['qdq_sentence']}.")
    for c in r["cells"]:
        if c.get("mix"):
            m = c["mix"]
            chosen = (f"given by `{m.get('source') or 'calibration.float_groups'}` (matrices/int8_gpu.yaml says "
                      "which search found it)" if m["met"] is None else
                      f"ΔAP on the sensitivity split {m['sensitivity_delta_ap']:+.4f} (budget "
                      f"{m['ap_budget']}, {'met' if m['met'] else 'not met'})")
            lines.append(f"**int8-mixed:** float {m.get('float') or ', '.join(m['kept_float_groups']) or 'none'}; "
                         f"{m['int8_conv_flops_fraction']:.1%} of conv FLOPs int8; {chosen}; on the evaluation split "
                         f"{f(c.get('delta_ap_vs_fp32'), '+.4f')} vs the CUDA EP's fp32 — target "
                         f"{v.get('mixed_target')}: **{'met' if v.get('mixed_met') else 'NOT met'}**.")
        if c.get("error"):
            lines.append(f"- {c['precision']} failed: {c['error']}")
    for c in r["cells"]:
        for line in c.get("attribution") or []:
            lines.append(f"- {c['precision']}: {line}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
