"""Where the fixture's batched device NMS spends its time (issue #12): a diagnostic, not a result.

Runs the trained fixture (320 px, batch 32, fp32) on synthetic images on the GPU, then times
``harness.export.device_nms.batched_postprocess`` alone (wall, with a synchronize) at several
block sizes, prints the candidate counts it sees and torch.profiler's top CUDA and CPU ops.

    python3 benchmarks/nms_profile.py --out DIR
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    import cv2
    import torch

    from harness.data.synth import generate
    from harness.export import device_nms
    from harness.export.deploy import DeployModel
    from harness.models.mmyolo_build import build_model, load_config, prepare_mm
    from harness.models.preprocess import Preprocessor

    prepare_mm()
    fixture = ROOT / "fixtures" / "yolov8_synth"
    cfg = load_config(fixture / "config.py", 320)
    model = build_model(cfg, str(fixture / "yolov8_synth.pth")).cuda().eval()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), images=args.batch, seed=2, size=320)
        images = [cv2.imread(str(p)) for p in sorted((Path(tmp) / "images").iterdir())]
    prep = Preprocessor(cfg)(images, list(range(args.batch)))
    deploy = DeployModel(model, nms="none").eval()
    x = prep.inputs.cuda()
    with torch.inference_mode():
        boxes, scores = deploy(x)
    test_cfg = dict(model.bbox_head.test_cfg)
    flat = scores.reshape(scores.shape[0], -1)
    nvalid = (flat > test_cfg.get("score_thr", -1)).sum(1).clamp(max=test_cfg.get("nms_pre", 100000))
    report = {"test_cfg": {k: (v if not isinstance(v, dict) else dict(v)) for k, v in test_cfg.items()},
              "candidates_per_image": {"min": int(nvalid.min()), "median": int(nvalid.median()),
                                       "max": int(nvalid.max())},
              "priors": int(scores.shape[1]), "classes": int(scores.shape[2]), "timings": {}}

    def model_once():
        with torch.inference_mode():
            return deploy(x)

    def post_once(block):
        with torch.inference_mode():
            out = device_nms.batched_postprocess(boxes, scores, prep.metas, test_cfg, block=block)
        torch.cuda.synchronize()
        return out

    for name, fn in [("model", model_once)] + [(f"nms_block{b}", (lambda b=b: post_once(b)))
                                                for b in (256, 512, 1024, 2048)]:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        walls = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            walls.append((time.perf_counter() - t0) * 1e3)
        walls.sort()
        report["timings"][name] = {"median_ms": round(walls[len(walls) // 2], 3), "min_ms": round(walls[0], 3)}
        print(name, report["timings"][name], flush=True)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            post_once(None)
    table_cuda = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    table_cpu = prof.key_averages().table(sort_by="cpu_time_total", row_limit=25)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nms_profile.json").write_text(json.dumps(report, indent=1))
    (args.out / "nms_profile_tables.txt").write_text(table_cuda + "\n\n" + table_cpu)
    print(json.dumps(report, indent=1))
    print(table_cuda[:6000])


if __name__ == "__main__":
    main()
