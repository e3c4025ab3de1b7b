"""What does running a cell as a Ray task cost over the local executor? (CPU; target <= 1 s per cell)

The same small matrix (yolov8_n, random weights, 64 px, PyTorch on CPU, N cells) runs
with the local executor and with the Ray executor on a local Ray instance of one CPU
(so Ray, like the local executor, runs one cell at a time), in alternating rounds so
that load drift hits both.  Both run cells with one thread (``OMP_NUM_THREADS=1``, what Ray
sets for a one-CPU task): on 2 shared cores a 2-thread local cell is several times slower
under contention, which would show as a large *negative* Ray overhead (seen: -15 to -24 s).  Per-cell overhead = (Ray's wall time - local wall time) / N
for ``orchestrator.execute`` (submission, scheduling, worker start, result transfer,
store writes); the one-off ``ray.init`` is reported apart.  The machine's load average
is recorded before and after: on a shared machine the numbers are only as quiet as it.

    python benchmarks/ray_overhead.py --out benchmarks/results [--rounds 3] [--cells 4]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.measure import provenance  # noqa: E402
from harness.runner import orchestrator  # noqa: E402
from harness.store import Store  # noqa: E402

MATRIX = """name: ray-overhead
models: [{{name: yolov8_n, checkpoint: random}}]
backends: [pytorch]
batch_sizes: {batches}
image_sizes: [64]
devices: [cpu]
dataset: {{synth: {{images: 2, seed: 5, size: 96}}}}
timing: {{warmup: 1, iterations: 3, e2e: false}}
alignment: {{images: 0}}
"""


def one_run(work: Path, matrix: Path, cache: Path, executor) -> dict:
    store = Store(f"sqlite:///{work / 'results.db'}")
    run_id = orchestrator.create_run(store, matrix, cache)
    started = time.perf_counter()
    outcomes = orchestrator.execute(store, run_id, cache, executor=executor)
    wall = time.perf_counter() - started
    assert all(o.status == "ok" for o in outcomes), [(o.key, o.error) for o in outcomes]
    worker = sum(c.duration_s for c in store.cells(run_id))
    store.close()
    return {"wall_s": wall, "worker_s": worker}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cells", type=int, default=4)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray sets OMP_NUM_THREADS=num_cpus (1) in its tasks; the local worker would use every core.
    # Equal threads, or the comparison measures thread contention instead of executor overhead.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("RAY_worker_niceness", "0")  # as the Ray executor's own local start does
    import ray

    from harness.runner.executors.ray_executor import RayExecutor

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="ray_overhead_"))
    matrix = tmp / "m.yaml"
    matrix.write_text(MATRIX.format(batches=list(range(1, args.cells + 1))))
    cache = tmp / "cache"
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=1, num_gpus=0, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    (tmp / "warm").mkdir()
    one_run(tmp / "warm", matrix, cache, None)  # the dataset and the OS file cache, once
    rounds = []
    for r in range(args.rounds):
        row = {}
        for name, executor in (("local", None), ("ray", RayExecutor(cpus_per_cell=1))):
            work = tmp / f"{name}{r}"
            work.mkdir()
            row[name] = one_run(work, matrix, cache, executor)
        row["overhead_per_cell_s"] = (row["ray"]["wall_s"] - row["local"]["wall_s"]) / args.cells
        # the same, counting only the time spent outside the cells' own worker processes: the
        # cells' work (imports, inference) is what load slows most, and it is the same in both
        outside = {k: row[k]["wall_s"] - row[k]["worker_s"] for k in ("local", "ray")}
        row["outside_worker_overhead_per_cell_s"] = (outside["ray"] - outside["local"]) / args.cells
        rounds.append(row)
        print(f"round {r}: local {row['local']['wall_s']:.1f} s, ray {row['ray']['wall_s']:.1f} s, "
              f"overhead {row['overhead_per_cell_s']:.2f} s/cell "
              f"(outside the workers {row['outside_worker_overhead_per_cell_s']:.2f})", flush=True)
    ray.shutdown()
    per_cell = [r["overhead_per_cell_s"] for r in rounds]
    outside = [r["outside_worker_overhead_per_cell_s"] for r in rounds]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"host": platform.node(), "cpu": provenance.host_environment()["cpu"],
                    "cpu_count": os.cpu_count(), "load_avg_before": load_before,
                    "load_avg_after": os.getloadavg(),
                    "note": "2 cores shared with other sessions' jobs: see the load averages"},
        "ray": ray.__version__, "cells": args.cells, "rounds": rounds, "ray_init_s": init_s,
        "overhead_per_cell_s": {"median": statistics.median(per_cell), "max": max(per_cell)},
        "outside_worker_overhead_per_cell_s": {"median": statistics.median(outside), "max": max(outside)},
        "target_s": 1.0,
        "pass": max(statistics.median(per_cell), statistics.median(outside)) <= 1.0,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_overhead.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Ray executor overhead per cell (CPU), {result['date']}", "",
             f"{result['machine']['cpu']} ({result['machine']['cpu_count']} cores), Ray {ray.__version__}; "
             f"load average before {load_before[0]:.1f}, after {result['machine']['load_avg_after'][0]:.1f} "
             "(the cores are shared with other jobs).", "",
             f"{args.cells} cells (yolov8_n random, 64 px, PyTorch CPU) per run; `ray.init` once: "
             f"{init_s:.1f} s. Both executors run each cell with one thread (OMP_NUM_THREADS=1).", "",
             "| round | local wall s | local in workers s | Ray wall s | Ray in workers s | "
             "overhead s/cell (wall) | overhead s/cell (outside the workers) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {i} | {r['local']['wall_s']:.2f} | {r['local']['worker_s']:.2f} | {r['ray']['wall_s']:.2f} | "
              f"{r['ray']['worker_s']:.2f} | {r['overhead_per_cell_s']:.2f} | "
              f"{r['outside_worker_overhead_per_cell_s']:.2f} |" for i, r in enumerate(rounds)]
    lines += ["", f"Median overhead per cell: **{result['overhead_per_cell_s']['median']:.2f} s** (wall), "
              f"**{result['outside_worker_overhead_per_cell_s']['median']:.2f} s** (outside the cells' "
              f"workers); target <= 1 s: {'PASS' if result['pass'] else 'FAIL'}."]
    (out / "ray_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
