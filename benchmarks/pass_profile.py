"""Where the fixture's accuracy pass spends its time on the GPU (issue #12): a diagnostic.

Builds a real PyTorch CUDA cell context for the trained fixture (320 px, batch 32, fp32) on N
synthetic images, loads the runner, fills the preprocessed-input cache with one pass, then times
(a) the model alone over the same cached batches (wall, eager, one synchronize at the end),
(b) the worker's accuracy pass (``harness.runner.worker._infer_stream``) as a cell runs it,
and (c) that pass again under torch.profiler (top CPU ops written to a text file).

    python3 benchmarks/pass_profile.py --out DIR [--images 2000]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "fixtures" / "yolov8_synth"


def _ctx(tmp: Path, images: int, batch: int):
    from harness import matrix as mx
    from harness.data.synth import generate
    from harness.runner.context import CellContext

    ann = generate(tmp / "data", images=images, seed=2, size=320)
    m = mx.parse({"name": "pass-profile",
                  "models": [{"name": "yolov8_synth", "config": str(FIXTURE / "config.py"),
                              "checkpoint": str(FIXTURE / "yolov8_synth.pth")}],
                  "backends": ["pytorch"], "precisions": ["fp32"], "batch_sizes": [batch],
                  "image_sizes": [320], "devices": ["cuda"], "alignment": {"images": 0},
                  "dataset": {"images": str(tmp / "data" / "images"), "annotations": str(ann)}})
    cell = mx.expand(m)[0]
    cell["dataset"] = {"images": str(tmp / "data" / "images"), "annotations": str(ann), "limit": None}
    cell["cache_dir"] = str(tmp / "cache")
    work = tmp / "work"
    work.mkdir()
    return cell, CellContext(cell, work, tmp / "cache")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    import gc

    import torch

    from harness.backends.pytorch import PyTorchRunner
    from harness.models.stream import BatchStream
    from harness.runner.worker import _infer_stream

    report = {"images": args.images, "batch": args.batch, "freeze_count_at_start": gc.get_freeze_count()}
    with tempfile.TemporaryDirectory() as tmp:
        cell, ctx = _ctx(Path(tmp), args.images, args.batch)
        runner = PyTorchRunner(cell, ctx)
        runner.load()
        pre = ctx.preprocessor("cuda")
        t0 = time.perf_counter()
        _infer_stream(runner, pre, ctx)  # fills the cache (cold)
        report["cold_pass_s"] = round(time.perf_counter() - t0, 3)
        # (a) the model alone over the cached batches
        batches = [p.inputs for p in BatchStream(ctx.dataset, pre, args.batch, "cuda", cache=ctx.input_cache(pre))]
        torch.cuda.synchronize()
        for rep in range(2):
            t0 = time.perf_counter()
            with torch.inference_mode():
                for x in batches:
                    runner._deploy_model()(x)
            torch.cuda.synchronize()
            report[f"model_only_loop_s_{rep}"] = round(time.perf_counter() - t0, 3)
        del batches
        # (b) the pass as a cell runs it, twice
        for rep in range(2):
            t0 = time.perf_counter()
            rows, _, _, stats = _infer_stream(runner, pre, ctx)
            report[f"warm_pass_s_{rep}"] = round(time.perf_counter() - t0, 3)
            report[f"warm_pass_stats_{rep}"] = stats
        report["detections"] = int(len(rows))
        # (c) under the profiler
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            _infer_stream(runner, pre, ctx)
        runner.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pass_profile.json").write_text(json.dumps(report, indent=1))
    cpu = prof.key_averages().table(sort_by="cpu_time_total", row_limit=40)
    self_cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
    (args.out / "pass_profile_tables.txt").write_text(cpu + "\n\n" + self_cpu)
    print(json.dumps(report, indent=1))
    print(self_cpu[:9000])


if __name__ == "__main__":
    main()
