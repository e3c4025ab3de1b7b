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
    """The current stage (file ``stage`` for the orchestrator) and wall seconds spent per stage."""

    def __init__(self, work_dir: Path):
        self.path = work_dir / "stage"
        self.current = None
        self.times: dict[str, float] = {}
        self._since = time.perf_counter()

    def enter(self, name: str) -> None:
        self._close()
        self.current = name
        self.path.write_text(name)
        print(f"[detbench] stage {name}", flush=True)
        _inject_fault(name)

    def _close(self) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.times[self.current] = self.times.get(self.current, 0.0) + now - self._since
        self._since = now

    def summary(self) -> dict:
        self._close()
        return {k: round(v, 4) for k, v in self.times.items()}


def _inject_fault(stage: str) -> None:
    """Testing hook: ``DETBENCH_FAULT=<key substring>@<stage>:<abort|segv|exit|hang|raise>[,...]``.

    It lets tests (and users checking their set-up) prove that a worker dying
    in a given stage is recorded and does not stop the matrix.
    """
    for spec in filter(None, os.environ.get("DETBENCH_FAULT", "").split(",")):
        target, _, action = spec.rpartition(":")
        key_part, _, fault_stage = target.rpartition("@")
        if fault_stage != stage or key_part not in _CURRENT_KEY:
            continue
        if action == "abort":
            os.abort()
        if action == "segv":  # a native crash (a null read), as a broken extension would
            import ctypes

            ctypes.string_at(0)
        if action == "exit":  # a library calling _exit: no traceback, no result
            os._exit(7)
        if action == "hang":
            time.sleep(10**6)
        if action == "raise":
            raise RuntimeError(f"fault injected by DETBENCH_FAULT={spec}")


def run_cell(ctx: CellContext, stages: Stages) -> dict:
    from harness.measure import provenance

    cell = ctx.cell
    stages.enter("load")
    t0 = time.perf_counter()
    import torch  # noqa: F401 - every runner needs it; timed apart from the rest of the load

    t1 = time.perf_counter()
    if not ctx.is_onnx_source:  # an ONNX model has no mmyolo config
        ctx.cfg  # mm* imports, module registration, the model config
    t2 = time.perf_counter()
    dataset = ctx.dataset
    ctx.box_type  # noqa: B018 - a model/dataset box-type mismatch fails the cell at load
    runner = BACKENDS[cell["backend"]].load_runner_class()(cell, ctx)
    try:
        runner.load()
    except SkipCell as exc:  # keep what was learnt before the skip (e.g. a TensorRT build on CPU)
        info = runner.info
        return {"status": "skipped", "stage": stages.current, "error": str(exc),
                "provenance": {**info.facts, "eval": ctx.effective_eval()},
                "artifacts": info.artifacts, "warnings": ctx.notes + info.warnings}
    load_breakdown = {"import_torch_s": round(t1 - t0, 3), "mm_imports_config_s": round(t2 - t1, 3),
                      "runner_load_s": round(time.perf_counter() - t2, 3)}
    try:
        pre = ctx.preprocessor(cell["device"])
        stages.enter("infer")
        collected, dropped, decoded, stream_stats = _infer_stream(runner, pre, ctx)
        ids = [im.id for im in dataset.images]
        stages.enter("eval")
        detections = _entries(collected)  # COCO json entries, built once, outside the timed pass
        det_path = ctx.work_dir / "detections.json"
        det_path.write_text(json.dumps(detections))
        coco = _evaluate(ctx, detections, ids)  # may add keys to the entries: they are written
        stages.enter("measure")
        from harness.measure.measure_cell import measure

        first = dataset.images[:cell["batch"]]
        timing = measure(runner, pre, [dataset.read(im) for im in first], [im.id for im in first], cell)
        result = {
            "status": "ok", "metrics": {**coco["stats"], "detections": len(detections),
                                        "dropped_labels": dropped, "box_type": ctx.box_type},
            "class_ap": coco["per_class"], **timing,
            "artifacts": {"detections": str(det_path), **decoded, **runner.info.artifacts},
            "provenance": {**provenance.device_environment(cell["device"]), **runner.info.facts,
                           "eval": {**ctx.effective_eval(), "evaluator": coco["evaluator"],
                                    **({"metric": coco["metric"]} if coco.get("metric") else {})},
                           "config": str(ctx.config_path),
                           "config_hash": provenance.file_hash(ctx.config_path),
                           "checkpoint_hash": _checkpoint_hash(ctx),
                           "annotations_hash": provenance.file_hash(dataset.ann_file),
                           "input_stream": stream_stats, "load_breakdown": load_breakdown},
            "warnings": ctx.notes + runner.info.warnings + timing.pop("warnings", []),
        }
        mix = runner.info.facts.get("int8_mixed")
        if mix:  # the mix in the results too, not only in provenance (#18)
            result["metrics"].update({"int8_conv_flops_fraction": mix["int8_conv_flops_fraction"],
                                      "int8_float_convs": len(mix["kept_float_nodes"]),
                                      "int8_mix_met": mix["met"],
                                      "int8_mix_delta_ap_sensitivity": mix["sensitivity_delta_ap"],
                                      **({"int8_mix_delta_ap_sensitivity_se": mix["sensitivity_delta_ap_se"]}
                                         if mix.get("sensitivity_delta_ap_se") is not None else {})})
        if dropped:
            result["warnings"].append(f"{dropped} detections had labels beyond the dataset's "
                                      f"{len(dataset.category_ids)} categories and were not scored")
        return result
    finally:
        runner.close()


def _evaluate(ctx, detections: list[dict], ids: list[int]) -> dict:
    """COCO bbox AP (pycocotools or faster-coco-eval) for horizontal cells; rotated-IoU AP
    (COCO-style and DOTA, ``harness.evaluate.rotated_eval``) for rotated ones (#19)."""
    if ctx.box_type == "rotated":
        from harness.evaluate.rotated_eval import evaluate_rotated

        return evaluate_rotated(ctx.dataset.ann_file, detections, ids)
    from harness.evaluate.coco_eval import evaluate

    return evaluate(ctx.dataset.ann_file, detections, ids, copy=False,
                    evaluator=ctx.cell.get("eval", {}).get("evaluator") or "pycocotools")


def _entries(collected) -> list[dict]:
    """The accuracy pass's detections as COCO json entries: a horizontal cell collects
    :func:`~harness.evaluate.coco_eval.to_coco_rows` arrays (no per-detection Python while
    the device waits), a rotated cell its entries."""
    if isinstance(collected, list):
        return collected
    from harness.evaluate.coco_eval import rows_to_detections

    return rows_to_detections(collected)


def _converter(ctx):
    """Detections of one image -> COCO result entries: ``bbox`` (xyxy boxes) or, for a rotated
    cell, ``rbox`` + its enclosing ``bbox`` (the boxes are ``[K, 5]`` cx, cy, w, h, angle)."""
    if ctx.box_type != "rotated":
        from harness.evaluate.coco_eval import to_coco_detections

        return lambda image_id, d, cats: to_coco_detections(image_id, d.boxes, d.scores, d.labels, cats)
    from harness.evaluate.rotated_eval import to_rotated_coco_detections

    def convert(image_id, d, cats):
        rboxes = getattr(d, "rboxes", None)
        rboxes = d.boxes if rboxes is None else rboxes
        if rboxes.ndim != 2 or rboxes.shape[1] != 5:
            raise RuntimeError(f"a rotated cell's runner returned boxes of shape {rboxes.shape}, "
                               "not [K, 5] (cx, cy, w, h, angle)")
        return to_rotated_coco_detections(image_id, rboxes, d.scores, d.labels, cats)

    return convert


def _infer_stream(runner, pre, ctx):
    """The accuracy pass: stream batches, infer, collect COCO detections and the alignment tensors.

    Images are decoded and preprocessed by workers ahead of the device (or read
    from the preprocessed-input cache); only a few batches are ever in memory.
    Returns ``(collected, dropped, decoded, stats)``: ``collected`` is the (N, 7)
    float64 array of :func:`~harness.evaluate.coco_eval.to_coco_rows` for a
    horizontal cell (one vectorised conversion per batch; :func:`_entries` makes
    the json entries after the pass), the entries themselves for a rotated one.
    """
    import numpy as np

    from harness.evaluate.coco_eval import to_coco_rows
    from harness.models.stream import BatchStream

    cell = ctx.cell
    rotated = ctx.box_type == "rotated"
    to_coco = _converter(ctx) if rotated else None
    cats = ctx.dataset.category_ids
    rows = []
    stream = BatchStream(ctx.dataset, pre, cell["batch"], cell["device"], cache=ctx.input_cache(pre))
    keep = min(int(cell.get("alignment", {}).get("images", 0)), len(ctx.dataset.images))
    out, dropped, seen = [], 0, 0
    boxes, scores, metas, capture = [], [], [], keep > 0
    infer_s = convert_s = 0.0
    # a horizontal cell's rows are made by one helper thread (numpy; this thread goes back to
    # the device at once); their order is the batches' order, errors are raised at the end
    from concurrent.futures import ThreadPoolExecutor

    pool = None if rotated else ThreadPoolExecutor(max_workers=1, thread_name_prefix="detbench-coco")
    try:
        for prepared in stream:
            if capture and seen < keep:  # the alignment tensors: model outputs before NMS
                dec = runner.decoded(prepared)
                if dec is None:
                    capture = False
                else:
                    take = min(keep - seen, len(prepared.image_ids))
                    boxes.append(dec[0][:take])
                    scores.append(dec[1][:take])
                    metas.extend(_plain_meta(m) for m in prepared.metas[:take])
            t0 = time.perf_counter()
            dets = runner.infer(prepared)  # model + postprocessing, results on the host
            t1 = time.perf_counter()
            if rotated:
                for image_id, d in zip(prepared.image_ids, dets):
                    entries, n = to_coco(image_id, d, cats)
                    out.extend(entries)
                    dropped += n
            else:
                rows.append(pool.submit(to_coco_rows, prepared.image_ids, dets, cats))
            infer_s += t1 - t0
            convert_s += time.perf_counter() - t1
            seen += len(prepared.image_ids)
        t1 = time.perf_counter()
        if not rotated:
            parts = [f.result() for f in rows]
            dropped += sum(n for _, n in parts)
            out = np.concatenate([r for r, _ in parts]) if parts else np.zeros((0, 7))
        convert_s += time.perf_counter() - t1
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    stats = {k: (round(v, 4) if isinstance(v, float) else v)
             for k, v in {**stream.stats, "model_post_s": infer_s, "to_coco_s": convert_s}.items()}
    decoded = _save_decoded(ctx, boxes, scores, metas) if capture and boxes else {}
    return out, dropped, decoded, stats


def _checkpoint_hash(ctx: CellContext) -> str:
    from harness.measure.provenance import file_hash

    ckpt = ctx.model_spec.get("checkpoint")
    if ckpt is None:  # an onnx: model: its graph's hash is the config_hash
        return None
    return "random" if ckpt == "random" else file_hash(ckpt)


def _save_decoded(ctx, boxes, scores, metas) -> dict:
    """Keep decoded pre-NMS tensors and image geometry of the first images, for alignment.

    Files: ``decoded.npz`` (image_ids (K,), boxes (K, A, 4) in input pixels,
    scores (K, A, C)) and ``decoded_metas.json`` (per image: ori_shape,
    img_shape, scale_factor, pad_param).
    """
    import numpy as np

    path = ctx.work_dir / "decoded.npz"
    ids = [m["img_id"] for m in metas]
    np.savez(path, image_ids=np.asarray(ids), boxes=np.concatenate(boxes), scores=np.concatenate(scores))
    (ctx.work_dir / "decoded_metas.json").write_text(json.dumps(metas))
    return {"decoded": str(path), "decoded_metas": str(ctx.work_dir / "decoded_metas.json")}


def _plain_meta(meta: dict) -> dict:
    keys = ("img_id", "ori_shape", "img_shape", "scale_factor", "pad_param")
    return {k: (meta[k].tolist() if hasattr(meta[k], "tolist") else meta[k]) for k in keys if k in meta}


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the orchestrator dies, so a killed run leaves no orphan.

    Set here, not in a Popen ``preexec_fn``: that runs between fork and exec, where a
    lock held by another thread of the orchestrator (rich's refresh thread, the
    dynamic loader) can deadlock the child, and the parent with it.
    """
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = os.environ.get("DETBENCH_PARENT_PID")
    if parent and os.getppid() != int(parent):  # the orchestrator died before prctl took effect
        os._exit(1)


def main(argv: list[str], started_by: str = "spawn") -> int:
    """One cell; ``started_by``: ``spawn`` (``python -m harness.runner.worker``) or ``forkserver``
    (forked by the run's pre-imported zygote, :mod:`harness.runner.zygote`)."""
    startup = _process_age_s()  # interpreter start + imports up to here (a forked child: ~0)
    _die_with_parent()
    work_dir = Path(argv[0])
    (work_dir / "pid").write_text(str(os.getpid()))  # which process runs the cell (ps, tests)
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
    result["stage_times"] = {**({"startup": startup} if startup is not None else {}),
                             **stages.summary()}
    if result.get("status") == "ok":
        result["provenance"] = {**(result.get("provenance") or {}),
                                "worker": {"start": started_by, "pid": os.getpid(),
                                           "parent_pid": os.getppid()}}
    rss = _peak_rss_mb()
    if rss is not None and result.get("status") == "ok":
        result["telemetry"] = {**(result.get("telemetry") or {}), "worker_peak_rss_mb": rss}
    (work_dir / "result.json").write_text(json.dumps(result, default=_json_default))
    return 0


def _peak_rss_mb():
    """The worker process's peak resident memory (MiB), or None where ``resource`` is missing."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _process_age_s():
    """Seconds since this process started (Linux /proc), or None."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
