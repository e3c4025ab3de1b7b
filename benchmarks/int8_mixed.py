"""int8-mixed on the fixture (#18): the target is ΔAP >= -0.003 vs fp32 with >= 80 % of conv FLOPs int8.

Runs matrices/int8_mixed.yaml (ONNX Runtime CPU fp32 / int8 / int8-mixed, 320 px; a PyTorch
fp32 reference when the matrix has one) unless --run-id names a finished run, then writes
benchmarks/results/int8_mixed.{json,md}: AP of every cell, ΔAP vs ONNX Runtime fp32 (and vs
PyTorch fp32), the mix (float groups, share of conv FLOPs int8, ΔAP on the sensitivity split with
its paired-bootstrap SE and 95 % CI, the search criterion), the ranked sensitivity table, the
search steps, and the evaluation split's ΔAP of the int8 and int8-mixed graphs with their
paired-bootstrap intervals (the cells' attribution records, when they cover the whole split).

    PYTHONPATH=$PWD python3 benchmarks/int8_mixed.py --db sqlite:///int8.db --cache-dir .detbench
"""
from __future__ import annotations

import argparse
import json
import os
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
    ap.add_argument("--where", default="CPU only (no GPU), ONNX Runtime CPU EP",
                    help="the machine and runtime, for the report")
    args = ap.parse_args(argv)
    if args.run_id is None:
        subprocess.run([sys.executable, "-m", "harness.cli", "run", str(ROOT / "matrices/int8_mixed.yaml"),
                        "--db", args.db, "--cache-dir", args.cache_dir], check=False)
    from harness.calibration.sensitivity import float_text
    from harness.runner.compare import int8_layers, mix_summary, sensitivity_rows
    from harness.store import Store

    store = Store(args.db, readonly=True)
    run = store.get_run(args.run_id or "latest")
    cells = {c.precision + "/" + c.backend: c for c in store.cells(run.id)}
    ort32 = cells["fp32/onnxruntime"].metrics["AP"]
    pt32 = cells["fp32/pytorch"].metrics["AP"] if "fp32/pytorch" in cells else None
    out_cells = []
    for key, c in cells.items():
        prov = c.provenance or {}
        mix = prov.get("int8_mixed")
        ap = (c.metrics or {}).get("AP")
        out_cells.append({"cell": c.key, "status": c.status, "AP": ap,
                          "delta_ap_vs_onnxruntime_fp32": None if ap is None else ap - ort32,
                          "delta_ap_vs_pytorch_fp32": None if ap is None or pt32 is None else ap - pt32,
                          "latency_median_ms": (c.latency or {}).get("median_ms"),
                          **({"int8_mixed": {k: v for k, v in mix.items() if k != "search"}} if mix else {})})
    mixed = cells["int8-mixed/onnxruntime"]
    mix = mixed.provenance["int8_mixed"]
    calib = mixed.params.get("calibration") if isinstance(mixed.params, dict) else None
    dap = mixed.metrics["AP"] - ort32
    full = cells["int8/onnxruntime"].metrics["AP"] - ort32
    synth = ((mixed.params or {}).get("dataset") or {}).get("synth") or {}
    eval_images = synth.get("images")
    mixed_eval = _evaluation_interval(mixed.provenance.get("int8_attribution"), mix, dap)
    int8_eval = _evaluation_interval((cells["int8/onnxruntime"].provenance or {}).get("int8_attribution"),
                                     None, full)
    verdict = {"delta_ap_vs_fp32": dap, "int8_conv_flops_fraction": mix["int8_conv_flops_fraction"],
               "kept_float_groups": mix["kept_float_groups"], "float": float_text(mix),
               "granularity": mix.get("granularity", "group"), "kept_float_convs": len(mix["kept_float_nodes"]),
               "evaluation_bootstrap": mixed_eval,
               "target": f"ΔAP >= {TARGET_DAP} with >= {TARGET_FLOPS:.0%} of conv FLOPs int8",
               "met": dap >= TARGET_DAP and mix["int8_conv_flops_fraction"] >= TARGET_FLOPS,
               "met_at_ci_low": (None if not mixed_eval else
                                 mixed_eval["ci_low"] >= TARGET_DAP and mix["int8_conv_flops_fraction"] >= TARGET_FLOPS)}
    layers = int8_layers(mixed.provenance)
    if full < 0:
        layers["attribution"].append(
            f"evaluation split: keeping {float_text(mix)} float removes "
            f"{(dap - full) / -full:.0%} of the int8 cell's ΔAP ({full:+.4f} -> {dap:+.4f} vs ONNX Runtime fp32)")
    t = layers["sensitivity"]
    result = {"benchmark": "int8-mixed on the fixture", "date": datetime.now(timezone.utc).isoformat(),
              "host": platform.node(), "device": args.where,
              "run_id": run.id, "matrix": "matrices/int8_mixed.yaml", "verdict": verdict,
              "int8_evaluation_bootstrap": int8_eval,
              "cells": out_cells, "search": mix["search"], "sensitivity": t,
              "attribution": layers["attribution"]}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2, default=str))
    evaluation = (cells["int8/onnxruntime"].provenance or {}).get("int8_attribution")
    n_eval = eval_images or (evaluation or {}).get("images")
    method = (calib or {}).get("method") or t["method"]
    cal_images = (calib or {}).get("images") or mixed.provenance.get("calibration_images")
    lines = [f"# int8-mixed on the fixture ({result['date'][:10]}, {result['host']}: {args.where})", "",
             f"Run `{run.id}` of `matrices/int8_mixed.yaml`: yolov8_synth 320 px, evaluation split "
             f"{'synth seed ' + str(synth['seed']) + ' ' if synth else ''}({n_eval} images), calibration {mixed.provenance.get('calibration_source')} "
             f"({cal_images} images, {method}), sensitivity split {t['split']} ({t['images']} images).", "",
             f"**Target** {verdict['target']}: **{'met' if verdict['met'] else 'NOT met'}** — int8-mixed "
             f"ΔAP {dap:+.4f}{_iv(mixed_eval)} vs ONNX Runtime fp32 on the evaluation split, "
             f"{mix['int8_conv_flops_fraction']:.1%} of conv FLOPs int8, float: "
             f"{float_text(mix)}."
             + ("" if verdict["met_at_ci_low"] is None else
                f" The 95 % CI's lower end {'also meets' if verdict['met_at_ci_low'] else 'does not meet'} "
                f"the target.") + f" (all-int8 cell: ΔAP {full:+.4f}{_iv(int8_eval)}.)", "",
             "| cell | AP | ΔAP vs ORT fp32 | ΔAP vs PyTorch fp32 |", "|---|---|---|---|"]
    for c in out_cells:
        lines.append(f"| {c['cell']} | {_f(c['AP'], '.4f')} | {_f(c['delta_ap_vs_onnxruntime_fp32'], '+.4f')} | "
                     f"{_f(c['delta_ap_vs_pytorch_fp32'], '+.4f')} |")
    if pt32 is None:
        lines += ["", "(no PyTorch fp32 cell in this run's matrix)"]
    rows = sensitivity_rows(layers)
    lines += ["", mix_summary(layers), "", "| " + " | ".join(rows[0]) + " |",
              "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r.values()) + " |" for r in rows]
    lines += [""] + [f"- {line}" for line in layers["attribution"]]
    if evaluation:  # the int8 cell's ΔAP per layer group on its own evaluation images (#18 item 4)
        from harness.calibration.attribution import caption, rows as attribution_rows

        table = attribution_rows(evaluation)
        lines += ["", "Attribution of the int8 cell's ΔAP on the evaluation images: " + caption(evaluation), "",
                  "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        lines += ["| " + " | ".join(r.values()) + " |" for r in table]
        result["evaluation_attribution"] = evaluation
        Path(args.out + ".json").write_text(json.dumps(result, indent=2, default=str))
    lines += ["", "Search steps (sensitivity split):", ""]
    lines += [f"- {s['action']} (float: {', '.join(s['kept_float']) or 'none'}): ΔAP {'—' if s['delta_ap'] is None else format(s['delta_ap'], '+.4f')}"
              + ("" if "se" not in s else f" ± {s['se']:.4f} (95% CI [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}])")
              + ("" if "criterion" not in s else
                 f", criterion {s['criterion']:+.4f} ({'meets' if s['meets_budget'] else 'misses'} −{mix['ap_budget']})")
              + f", {s['int8_flops_fraction']:.1%} int8" + (f" — {s['reason']}" if s.get("reason") else "")
              for s in mix["search"]]
    if mix.get("criterion"):
        lines += ["", f"Search criterion: {mix['criterion']} (SE: paired bootstrap over the sensitivity "
                      f"split's images)."]
    lines += ["", f"Made by `PYTHONPATH=$PWD python3 benchmarks/int8_mixed.py --db {args.db}"
                  + (f" --run-id {args.run_id}` (the run: `python3 -m harness.cli run matrices/int8_mixed.yaml "
                     "--cache-dir .detbench`)" if args.run_id else "`") + " on a CPU-only host "
                  f"({os.cpu_count()} cores, shared with other jobs: the cells' latencies are not "
                  "claimed, only AP)."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if verdict["met"] else 1


def _f(v, spec):
    return "—" if v is None else format(v, spec)


def _iv(b):
    """The interval; when the attribution re-run's ΔAP (same graph and images, batches of 8, the
    sensitivity evaluator) differs from the cell's, its own point estimate is shown with it."""
    if not b:
        return ""
    own = "" if b["equals_cell_delta"] else f"re-run ΔAP {b['delta_ap']:+.4f}, "
    return f" ({own}95% CI [{b['ci_low']:+.4f}, {b['ci_high']:+.4f}], SE {b['se']:.4f})"


def _evaluation_interval(record, mix, cell_delta):
    """The paired-bootstrap interval of a graph's ΔAP on the evaluation split, from a cell's
    attribution record (the int8 graph: ``mix`` None; a mix: the row of its float set);
    None unless the record covers the whole split and its ΔAP is the cell's."""
    if not record or "int8_delta_ap_ci" not in record or "of" in str(record.get("split", "")):
        return None
    if not mix or not mix.get("kept_float_nodes"):
        d, se, ci = record["int8_delta_ap"], record["int8_delta_ap_se"], record["int8_delta_ap_ci"]
    else:
        nodes = set(mix["kept_float_nodes"])
        row = next((r for r in record["rows"] if "delta_ap_ci" in r and (
            set(r.get("nodes") or []) == nodes or (r["kind"] != "mix" and "nodes" not in r
                                                    and set(r["groups"]) == set(mix["kept_float_groups"])
                                                    and mix.get("granularity", "group") == "group"))), None)
        if row is None:
            return None
        d, se, ci = row["delta_ap"], row["delta_ap_se"], row["delta_ap_ci"]
    return {"delta_ap": d, "se": se, "ci_low": ci[0], "ci_high": ci[1], "images": record["images"],
            "bootstrap": record.get("bootstrap"), "cell_delta_ap": cell_delta,
            "equals_cell_delta": round(d, 4) == round(cell_delta, 4)}  # as printed


if __name__ == "__main__":
    sys.exit(main())
