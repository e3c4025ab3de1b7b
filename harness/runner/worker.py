"""One cell, in its own process: load → infer → eval → measure, result to JSON.

Run as ``python -m harness.runner.worker CELL_DIR``.  The orchestrator reads
``CELL_DIR/stage`` to know where a crashed or hung worker was, and
``CELL_DIR/result.json`` for the outcome.  A user-facing problem or a runner's
``SkipCell`` becomes a recorded status; anything else is a bug and propagates
(non-zero exit, traceback in the log).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from harness import cache
from harness.backends import BACKENDS
from harness.backends.base import SkipCell
from harness.errors import UserError
from harness.runner.context import CellContext


_CURRENT_KEY = ""


class Stages:
    def __init__(self, work_dir: Path):
        self.path = work_dir / "stage"
        self.current = None

    def enter(self, name: str) -> None:
        self.current = name
        self.path.write_text(name)
        print(f"[detbench] stage {name}", flush=True)
        _inject_fault(name)


def _inject_fault(stage: str) -> None:
    """Testing hook: ``DETBENCH_FAULT=<key substring>@<stage>:<abort|hang|raise>``.

    It lets tests (and users checking their set-up) prove that a worker dying
    in a given stage is recorded and does not stop the matrix.
    """
    spec = os.environ.get("DETBENCH_FAULT")
    if not spec:
        return
    target, _, action = spec.rpartition(":")
    key_part, _, fault_stage = target.rpartition("@")
    if fault_stage != stage or key_part not in _CURRENT_KEY:
        return
    if action == "abort":
        os.abort()
    if action == "hang":
        time.sleep(10**6)
    if action == "raise":
        raise RuntimeError(f"fault injected by DETBENCH_FAULT={spec}")


def run_cell(ctx: CellContext, stages: Stages) -> dict:
    from harness.measure import provenance

    cell = ctx.cell
    stages.enter("load")
    dataset = ctx.dataset
    runner = BACKENDS[cell["backend"]].load_runner_class()(cell, ctx)
    try:
        runner.load()
    except SkipCell as exc:  # keep what was learnt before the skip (e.g. a TensorRT build on CPU)
        info = runner.info
        return {"status": "skipped", "stage": stages.current, "error": str(exc),
                "provenance": {**info.facts, "eval": ctx.effective_eval()},
                "artifacts": info.artifacts, "warnings": ctx.notes + info.warnings}
    try:
        pre = ctx.preprocessor(cell["device"])
        images = [dataset.read(im) for im in dataset.images]
        ids = [im.id for im in dataset.images]
        stages.enter("infer")
        detections, dropped = _infer_all(runner, pre, images, ids, ctx)
        decoded = _capture_decoded(runner, pre, images, ids, ctx)
        stages.enter("eval")
        from harness.evaluate.coco_eval import evaluate

        det_path = ctx.work_dir / "detections.json"
        det_path.write_text(json.dumps(detections))
        coco = evaluate(dataset.ann_file, detections, ids)
        stages.enter("measure")
        from harness.measure.measure_cell import measure

        timing = measure(runner, pre, images, ids, cell)
        result = {
            "status": "ok", "metrics": {**coco["stats"], "detections": len(detections),
                                        "dropped_labels": dropped},
            "class_ap": coco["per_class"], **timing,
            "artifacts": {"detections": str(det_path), **decoded, **runner.info.artifacts},
            "provenance": {**provenance.device_environment(cell["device"]), **runner.info.facts,
                           "eval": ctx.effective_eval(), "config": str(ctx.config_path),
                           "config_hash": provenance.file_hash(ctx.config_path),
                           "checkpoint_hash": _checkpoint_hash(ctx),
                           "annotations_hash": provenance.file_hash(dataset.ann_file)},
            "warnings": ctx.notes + runner.info.warnings + timing.pop("warnings", []),
        }
        mix = runner.info.facts.get("int8_mixed")
        if mix:  # the mix in the results too, not only in provenance (#18)
            result["metrics"].update({"int8_conv_flops_fraction": mix["int8_conv_flops_fraction"],
                                      "int8_float_convs": len(mix["kept_float_nodes"]),
                                      "int8_mix_met": mix["met"],
                                      "int8_mix_delta_ap_sensitivity": mix["sensitivity_delta_ap"]})
        if dropped:
            result["warnings"].append(f"{dropped} detections had labels beyond the dataset's "
                                      f"{len(dataset.category_ids)} categories and were not scored")
        return result
    finally:
        runner.close()


def _checkpoint_hash(ctx: CellContext) -> str:
    from harness.measure.provenance import file_hash

    ckpt = ctx.model_spec["checkpoint"]
    return "random" if ckpt == "random" else file_hash(ckpt)


def _capture_decoded(runner, pre, images, ids, ctx) -> dict:
    """Keep decoded pre-NMS tensors and image geometry of the first images, for alignment.

    Files: ``decoded.npz`` (image_ids (K,), boxes (K, A, 4) in input pixels,
    scores (K, A, C)) and ``decoded_metas.json`` (per image: ori_shape,
    img_shape, scale_factor, pad_param).
    """
    import numpy as np

    k = min(int(ctx.cell.get("alignment", {}).get("images", 0)), len(images))
    if k == 0:
        return {}
    batch = ctx.cell["batch"]
    boxes, scores, metas = [], [], []
    for start in range(0, k, batch):
        prepared = pre(images[start:min(start + batch, k)], ids[start:min(start + batch, k)])
        out = runner.decoded(prepared)
        if out is None:
            return {}
        boxes.append(out[0])
        scores.append(out[1])
        metas.extend(_plain_meta(m) for m in prepared.metas)
    path = ctx.work_dir / "decoded.npz"
    np.savez(path, image_ids=np.asarray(ids[:k]), boxes=np.concatenate(boxes), scores=np.concatenate(scores))
    (ctx.work_dir / "decoded_metas.json").write_text(json.dumps(metas))
    return {"decoded": str(path), "decoded_metas": str(ctx.work_dir / "decoded_metas.json")}


def _plain_meta(meta: dict) -> dict:
    keys = ("img_id", "ori_shape", "img_shape", "scale_factor", "pad_param")
    return {k: (meta[k].tolist() if hasattr(meta[k], "tolist") else meta[k]) for k in keys if k in meta}


def _infer_all(runner, pre, images, ids, ctx):
    from harness.evaluate.coco_eval import to_coco_detections

    batch = ctx.cell["batch"]
    cats = ctx.dataset.category_ids
    out, dropped = [], 0
    for start in range(0, len(images), batch):
        chunk_imgs, chunk_ids = images[start:start + batch], ids[start:start + batch]
        dets = runner.infer(pre(chunk_imgs, chunk_ids))
        for image_id, d in zip(chunk_ids, dets):
            entries, n = to_coco_detections(image_id, d.boxes, d.scores, d.labels, cats)
            out.extend(entries)
            dropped += n
    return out, dropped


def main(argv: list[str]) -> int:
    work_dir = Path(argv[0])
    cell = json.loads((work_dir / "cell.json").read_text())
    global _CURRENT_KEY
    _CURRENT_KEY = cell["key"]
    stages = Stages(work_dir)
    ctx = CellContext(cell, work_dir, Path(cell["cache_dir"]), stages=stages)
    started = time.time()
    try:
        result = run_cell(ctx, stages)
    except SkipCell as exc:
        result = {"status": "skipped", "stage": stages.current, "error": str(exc)}
    except UserError as exc:
        result = {"status": "failed", "stage": stages.current, "error": str(exc)}
    except Exception as exc:  # a bug or a backend crash inside Python: record, keep the traceback
        traceback.print_exc()
        result = {"status": "failed", "stage": stages.current, "error": f"{type(exc).__name__}: {exc}"}
    healed = cache.drain_warnings()  # corrupted cache entries rebuilt on the way
    if healed:
        result["warnings"] = list(result.get("warnings") or []) + healed
    result["duration_s"] = time.time() - started
    (work_dir / "result.json").write_text(json.dumps(result, default=_json_default))
    return 0


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
