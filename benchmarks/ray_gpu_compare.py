"""Compare the runs of benchmarks/run_gpu_ray.sh: local, Ray, local again (same cells).

AP must be equal; the Ray run's median model latency is "within noise" when it lies within
the range of the two local runs' medians widened by 2 % of their mean (the stated rule: two
local runs of the same cells disagree by about that much on a launch-bound model).
Writes OUT/ray_gpu.json and OUT/ray_gpu_table.md.   python benchmarks/ray_gpu_compare.py DB OUT
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.store import Store  # noqa: E402

TOL = 0.02


def cell_row(c) -> dict:
    prov, lat, e2e = c.provenance or {}, c.latency or {}, c.latency_e2e or {}
    return {"status": c.status, "AP": (c.metrics or {}).get("AP"), "median_ms": lat.get("median_ms"),
            "mad_ms": lat.get("mad_ms"), "p90_ms": lat.get("p90_ms"), "n": lat.get("n"),
            "e2e_median_ms": e2e.get("median_ms"), "gpu_uuid": prov.get("gpu_uuid"),
            "gpu_resolved_by": prov.get("gpu_resolved_by"),
            "cuda_visible_devices": prov.get("cuda_visible_devices"),
            "executor": (prov.get("executor") or {}).get("name", "local")}


def main(db: str, out: str) -> None:
    store = Store(db, readonly=True)
    runs = list(reversed(store.list_runs()))[-3:]
    table = {}
    for run in runs:
        for c in store.cells(run.id):
            row = cell_row(c)
            table.setdefault(c.key, []).append({"run": run.id, **row})
    verdicts = {}
    for key, rows in table.items():
        local = [r for r in rows if r["executor"] == "local"]
        ray = [r for r in rows if r["executor"] == "ray"]
        if not (local and ray) or any(r["median_ms"] is None for r in rows):
            verdicts[key] = {"comparable": False}
            continue
        lo, hi = min(r["median_ms"] for r in local), max(r["median_ms"] for r in local)
        slack = TOL * sum(r["median_ms"] for r in local) / len(local)
        verdicts[key] = {"same_ap": len({r["AP"] for r in rows}) == 1,
                         "latency_within_noise": all(lo - slack <= r["median_ms"] <= hi + slack for r in ray),
                         "ray_vs_local_mean": ray[0]["median_ms"] / (sum(r["median_ms"] for r in local) / len(local)),
                         "local_spread": (hi - lo) / lo}
    Path(out, "ray_gpu.json").write_text(json.dumps({"runs": [r.id for r in runs], "cells": table,
                                                     "verdicts": verdicts, "rule_tolerance": TOL}, indent=2))
    lines = ["| cell | run | executor | AP | model median ms | MAD ms | p90 ms | e2e median ms | GPU (resolved by) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, rows in table.items():
        for r in rows:
            lines.append(f"| {key} | {r['run']} | {r['executor']} | {r['AP']} | {r['median_ms']:.3f} | "
                         f"{r['mad_ms']:.3f} | {r['p90_ms']:.3f} | {r['e2e_median_ms']:.2f} | "
                         f"{r['gpu_uuid']} ({r['gpu_resolved_by']}, CUDA_VISIBLE_DEVICES={r['cuda_visible_devices']}) |"
                         if r["median_ms"] is not None else f"| {key} | {r['run']} | {r['executor']} | {r['status']} |")
    lines += ["", "| cell | same AP | Ray latency within noise | Ray / local mean | spread of the two local runs |",
              "|---|---|---|---|---|"]
    for key, v in verdicts.items():
        if v.get("comparable", True):
            lines.append(f"| {key} | {v['same_ap']} | {v['latency_within_noise']} | "
                         f"{v['ray_vs_local_mean']:.4f} | {v['local_spread']:.2%} |")
        else:
            lines.append(f"| {key} | not comparable (a run failed) | | | |")
    Path(out, "ray_gpu_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
