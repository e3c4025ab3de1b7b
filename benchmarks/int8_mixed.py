"""int8-mixed on the fixture (#18): the target is ΔAP >= -0.003 vs fp32 with >= 80 % of conv FLOPs int8.

Runs matrices/int8_mixed.yaml (PyTorch fp32 reference; ONNX Runtime CPU fp32 / int8 / int8-mixed,
320 px, 100 evaluation images) unless --run-id names a finished run, then writes
benchmarks/results/int8_mixed.{json,md}: AP of every cell, ΔAP vs ONNX Runtime fp32 and vs
PyTorch fp32, the mix (float groups, share of conv FLOPs int8, ΔAP on the sensitivity split) and
the ranked sensitivity table.

    PYTHONPATH=$PWD python3 benchmarks/int8_mixed.py --db sqlite:///int8.db --cache-dir .detbench
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET_DAP, TARGET_FLOPS = -0.003, 0.80


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="sqlite:///int8_mixed.db")
    ap.add_argument("--cache-dir", default=".detbench")
    ap.add_argument("--run-id", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/int8_mixed"))
    args = ap.parse_args(argv)
    if args.run_id is None:
        subprocess.run([sys.executable, "-m", "harness.cli", "run", str(ROOT / "matrices/int8_mixed.yaml"),
                        "--db", args.db, "--cache-dir", args.cache_dir], check=False)
    from harness.runner.compare import int8_layers, mix_summary, sensitivity_rows
    from harness.store import Store

    store = Store(args.db, readonly=True)
    run = store.get_run(args.run_id or "latest")
    cells = {c.precision + "/" + c.backend: c for c in store.cells(run.id)}
    ort32 = cells["fp32/onnxruntime"].metrics["AP"]
    pt32 = cells["fp32/pytorch"].metrics["AP"]
    out_cells = []
    for key, c in cells.items():
        prov = c.provenance or {}
        mix = prov.get("int8_mixed")
        out_cells.append({"cell": c.key, "status": c.status, "AP": (c.metrics or {}).get("AP"),
                          "delta_ap_vs_onnxruntime_fp32": (c.metrics or {}).get("AP", 0) - ort32,
                          "delta_ap_vs_pytorch_fp32": (c.metrics or {}).get("AP", 0) - pt32,
                          "latency_median_ms": (c.latency or {}).get("median_ms"),
                          **({"int8_mixed": {k: v for k, v in mix.items() if k != "search"}} if mix else {})})
    mixed = cells["int8-mixed/onnxruntime"]
    mix = mixed.provenance["int8_mixed"]
    dap = mixed.metrics["AP"] - ort32
    verdict = {"delta_ap_vs_fp32": dap, "int8_conv_flops_fraction": mix["int8_conv_flops_fraction"],
               "target": f"ΔAP >= {TARGET_DAP} with >= {TARGET_FLOPS:.0%} of conv FLOPs int8",
               "met": dap >= TARGET_DAP and mix["int8_conv_flops_fraction"] >= TARGET_FLOPS}
    layers = int8_layers(mixed.provenance)
    full = cells["int8/onnxruntime"].metrics["AP"] - ort32
    if full < 0:
        layers["attribution"].append(
            f"evaluation split: keeping {', '.join(mix['kept_float_groups'])} float removes "
            f"{(dap - full) / -full:.0%} of the int8 cell's ΔAP ({full:+.4f} -> {dap:+.4f} vs ONNX Runtime fp32)")
    result = {"benchmark": "int8-mixed on the fixture", "date": datetime.now(timezone.utc).isoformat(),
              "host": platform.node(), "device": "CPU only (no GPU), ONNX Runtime CPU EP",
              "run_id": run.id, "matrix": "matrices/int8_mixed.yaml", "verdict": verdict,
              "cells": out_cells, "search": mix["search"], "sensitivity": layers["sensitivity"],
              "attribution": layers["attribution"]}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2, default=str))
    lines = [f"# int8-mixed on the fixture ({result['date'][:10]}, {result['host']}, CPU only)", "",
             f"Run `{run.id}` of `matrices/int8_mixed.yaml`: yolov8_synth 320 px, evaluation split synth "
             "seed 2 (100 images), calibration synth seed 3 (32 images, minmax), sensitivity split "
             f"{layers['sensitivity']['split']} ({layers['sensitivity']['images']} images).", "",
             f"**Target** {verdict['target']}: **{'met' if verdict['met'] else 'NOT met'}** — int8-mixed "
             f"ΔAP {dap:+.4f} vs ONNX Runtime fp32, {mix['int8_conv_flops_fraction']:.1%} of conv FLOPs int8.", "",
             "| cell | AP | ΔAP vs ORT fp32 | ΔAP vs PyTorch fp32 |", "|---|---|---|---|"]
    for c in out_cells:
        lines.append(f"| {c['cell']} | {c['AP']:.4f} | {c['delta_ap_vs_onnxruntime_fp32']:+.4f} | "
                     f"{c['delta_ap_vs_pytorch_fp32']:+.4f} |")
    rows = sensitivity_rows(layers)
    lines += ["", mix_summary(layers), "", "| " + " | ".join(rows[0]) + " |",
              "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r.values()) + " |" for r in rows]
    lines += [""] + [f"- {line}" for line in layers["attribution"]]
    evaluation = (cells["int8/onnxruntime"].provenance or {}).get("int8_attribution")
    if evaluation:  # the int8 cell's ΔAP per layer group on its own evaluation images (#18 item 4)
        from harness.calibration.attribution import caption, rows as attribution_rows

        table = attribution_rows(evaluation)
        lines += ["", "Attribution of the int8 cell's ΔAP on the evaluation images: " + caption(evaluation), "",
                  "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        lines += ["| " + " | ".join(r.values()) + " |" for r in table]
        result["evaluation_attribution"] = evaluation
        Path(args.out + ".json").write_text(json.dumps(result, indent=2, default=str))
    lines += ["", "Search steps (sensitivity split):", ""]
    lines += [f"- {s['action']}: ΔAP {'—' if s['delta_ap'] is None else format(s['delta_ap'], '+.4f')}, "
              f"{s['int8_flops_fraction']:.1%} int8" for s in mix["search"]]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if verdict["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
