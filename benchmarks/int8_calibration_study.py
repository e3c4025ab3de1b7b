"""Calibration study (#18): the fixture's int8 AP per calibration method × calibration set size.

Runs ``matrices/int8_calibration_study.yaml`` through ``detbench run`` (unless ``--run-id`` names a
finished run of it): methods minmax / entropy / percentile / mse × 32 / 128 / 512 calibration images
(synthetic split seed 3, never the evaluation split), each an ordinary stored int8 cell
(``.../cal-<method>-<images>``) evaluated by ONNX Runtime on the CPU on the 100-image evaluation
split, next to PyTorch and ONNX Runtime fp32.  The store is the result (the dashboard's Compare page
charts it); this script also writes benchmarks/results/int8_calibration_study.{json,md} from it.

    PYTHONPATH=$PWD python3 benchmarks/int8_calibration_study.py \\
        --db sqlite:///benchmarks/results/int8_calibration_study.db --cache-dir .detbench
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MATRIX = ROOT / "matrices/int8_calibration_study.yaml"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default=f"sqlite:///{ROOT / 'benchmarks/results/int8_calibration_study.db'}")
    ap.add_argument("--cache-dir", default=".detbench")
    ap.add_argument("--run-id", default=None, help="report this finished run instead of running the matrix")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/int8_calibration_study"))
    args = ap.parse_args(argv)
    if args.run_id is None:
        done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(MATRIX), "--db", args.db,
                               "--cache-dir", args.cache_dir], check=False)
        if done.returncode not in (0, 1):  # 1: some cell failed, still reported below
            return done.returncode
    from harness.store import Store

    with Store(args.db, readonly=True) as store:
        run = store.get_run(args.run_id or "latest")
        cells = store.cells(run.id)
    result = report(run, cells)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2, default=str))
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def report(run, cells) -> dict:
    """The study as plain data: one row per int8 cell, with the fp32 baselines and scale clashes."""
    from dashboard.calibration import same_scales, study_frame

    frame = study_frame(cells)
    ort32 = next(c for c in cells if (c.backend, c.precision) == ("onnxruntime", "fp32"))
    pt32 = next((c for c in cells if (c.backend, c.precision) == ("pytorch", "fp32")), None)
    env = run.environment or {}
    rows = []
    for r in frame.to_dict("records"):
        cell = next(c for c in cells if c.key == r["key"])
        rows.append({"key": r["key"], "status": r["status"], "method": r["method"],
                     "calibration_images": r["images"], "AP": r["AP"], "AP50": r["AP50"],
                     "delta_ap_vs_onnxruntime_fp32": r["dAP_fp32"], "scales_sha256": r["scales_sha256"],
                     "duration_s": cell.duration_s, "stages_s": cell.stage_times, "error": cell.error})
    return {"study": "int8 calibration: method x calibration set size", "run_id": run.id,
            "date": run.created_at.isoformat(), "git_sha": run.git_sha, "matrix": "matrices/int8_calibration_study.yaml",
            "host": env.get("host"), "cpu": env.get("cpu"),
            "backend": "ONNX Runtime CPU EP, TensorRT-style symmetric Q/DQ (per-channel weights)",
            "model": "fixtures/yolov8_synth, 320 px, batch 1",
            "evaluation": "synth seed 2, 100 images", "calibration": "synth seed 3, first N images (nested)",
            "onnxruntime_fp32_ap": (ort32.metrics or {}).get("AP"),
            "pytorch_fp32_ap": (pt32.metrics or {}).get("AP") if pt32 else None,
            "rows": rows, "identical_scales": same_scales(frame)}


def markdown(r: dict) -> str:
    def f(v, spec):
        return "—" if v is None or v != v else format(v, spec)

    lines = [f"# int8 calibration study ({r['date'][:10]}, {r['host']}, CPU only)", "",
             f"Run `{r['run_id']}` of `{r['matrix']}` (git `{(r['git_sha'] or '')[:10]}`), stored in "
             f"`int8_calibration_study.db`: {r['model']}; {r['backend']}; AP on the evaluation split "
             f"({r['evaluation']}); calibration images: {r['calibration']}. ONNX Runtime fp32 AP "
             f"{f(r['onnxruntime_fp32_ap'], '.4f')}, PyTorch fp32 AP {f(r['pytorch_fp32_ap'], '.4f')}.", "",
             "| method | images | AP | ΔAP vs ORT fp32 | status | cell seconds |", "|---|---|---|---|---|---|"]
    from dashboard.calibration import METHODS

    order = {m: i for i, m in enumerate(METHODS)}
    for row in sorted(r["rows"], key=lambda x: (x["calibration_images"], order.get(x["method"], 9))):
        lines.append(f"| {row['method']} | {row['calibration_images']} | {f(row['AP'], '.4f')} | "
                     f"{f(row['delta_ap_vs_onnxruntime_fp32'], '+.4f')} | {row['status']} | "
                     f"{f(row['duration_s'], '.0f')} |")
    lines += ["", "Identical scales between methods: " + ("; ".join(r["identical_scales"]) or "none "
              "(every method chose its own scales at every size)") + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
