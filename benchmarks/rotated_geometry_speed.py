"""Speed of harness.geometry.rotated: exact rotated IoU and greedy rotated NMS, CPU and CUDA.

Scenes are detector-like: candidates jittered around objects in a 1024 px image (RTMDet-R keeps
up to 2,000 candidates per image before NMS, iou_threshold 0.1).  Each case: one warm-up, then
the median of --repeat timed runs (CUDA synchronised).  Writes
rotated_geometry_speed_<card>_<date>.json and .md under --out.

    python3 benchmarks/rotated_geometry_speed.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from harness.geometry import rotated as R


def scene(n: int, seed: int, per_object: int = 40, size: float = 1024.0):
    g = np.random.default_rng(seed)
    k = max(1, n // per_object)
    obj = np.concatenate([g.uniform(0, size, (k, 2)), g.uniform(10, 120, (k, 2)),
                          g.uniform(-np.pi / 2, np.pi / 2, (k, 1))], 1)
    b = obj[g.integers(0, k, n)]
    b[:, :2] += g.normal(0, 4, (n, 2))
    b[:, 2:4] *= g.uniform(0.8, 1.2, (n, 2))
    b[:, 4] += g.normal(0, 0.1, n)
    return (torch.tensor(b, dtype=torch.float32), torch.tensor(g.uniform(0.05, 1, n), dtype=torch.float32),
            torch.tensor(g.integers(0, 15, n)))


def timed(fn, device: str, repeat: int) -> tuple[float, object]:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    out = fn()
    sync()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default="500,1000,2000,4000")
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    rows = []
    for device in devices:
        for n in [int(x) for x in args.sizes.split(",")]:
            boxes, scores, labels = (t.to(device) for t in scene(n, seed=n))
            ms, iou = timed(lambda: R.rotated_iou(boxes, boxes), device, args.repeat)
            pairs = int((iou > 0).sum())
            rows.append({"device": device, "op": "rotated_iou NxN", "n": n, "ms": round(ms, 3),
                         "overlapping_pairs": pairs})
            for thr in (0.1, 0.5):
                ms, keep = timed(lambda: R.nms_rotated(boxes, scores, thr), device, args.repeat)
                rows.append({"device": device, "op": f"nms_rotated thr {thr}", "n": n, "ms": round(ms, 3),
                             "kept": len(keep)})
            ms, keep = timed(lambda: R.batched_nms_rotated(boxes, scores, labels, 0.1), device, args.repeat)
            rows.append({"device": device, "op": "batched_nms_rotated thr 0.1 (15 classes)", "n": n,
                         "ms": round(ms, 3), "kept": len(keep)})
            print(json.dumps(rows[-4:]), flush=True)
    meta = {"card": card, "date": dt.date.today().isoformat(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "git_sha": os.environ.get("DETBENCH_GIT_SHA", "unknown"), "repeat": args.repeat,
            "timing": "median of repeat runs after one warm-up, wall clock, CUDA synchronised"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"rotated_geometry_speed_{card.lower().replace(' ', '_')}_{meta['date']}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Rotated IoU / NMS speed ({card}, {meta['date']})", "",
             f"torch {meta['torch']}, {meta['cpu_count']} CPUs ({meta['torch_threads']} torch threads), "
             f"git {meta['git_sha']}; {meta['timing']}.", "",
             "| device | op | candidates | ms | overlapping pairs / kept |", "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['op']} | {r['n']} | {r['ms']} | "
                     f"{r.get('overlapping_pairs', r.get('kept'))} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / stem}.json/.md")


if __name__ == "__main__":
    main()
