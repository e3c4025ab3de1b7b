"""AP-aware int8: which layer groups' quantization costs AP, and a mixed Q/DQ graph within a budget.

Layer groups come from the exported graph's node names (the torch module
paths): backbone stem and stages, neck blocks, each head branch split into
its stacked convs and its final prediction conv, and ``decode`` (what follows
the head; it has no Conv, so Q/DQ never touches it and it stays float).

On a *sensitivity split* (neither the calibration nor the evaluation images)
every group is measured two ways against the fp32 graph: quantize-only-this
(every other Conv float) and leave-this-out (every other Conv int8), each as
COCO AP through mmyolo's own post-processing; plus the SQNR of each group's
Conv outputs in the fully quantized graph.  Every evaluation is cached by
(Q/DQ graph hash, split data hash, post-processing settings), so a second
cell, run or search reuses it.

The mixed graph is the same TensorRT-compatible Q/DQ graph (``qdq.py``) with
``nodes_to_exclude``: the groups kept float are chosen greedily in the order
of the ranking (AP recovered when left out + AP lost when quantized alone) until ΔAP ≤ budget, then
pruned (a kept group whose removal still meets the budget goes back to int8).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

MIN_SPLIT_IMAGES = 8  # below this an AP difference of 0.003 is noise
SQNR_IMAGES = 8  # images whose Conv outputs are compared tensor by tensor


# ---------------------------------------------------------------- graph: groups and FLOPs


def layer_groups(model) -> dict[str, list[str]]:
    """Ordered ``group -> Conv node names``; ``decode`` is listed even when it holds no Conv."""
    groups: dict[str, list[str]] = {}
    finals: dict[tuple, tuple] = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group, level_key = _group_of(node.name)
        groups.setdefault(group, []).append(node.name)
        if level_key is not None:  # head branch: the last conv of each level is the prediction conv
            branch, level, index = level_key
            if (branch, level) not in finals or finals[(branch, level)][0] < index:
                finals[(branch, level)] = (index, node.name)
    final_names = {name for _, name in finals.values()}
    out: dict[str, list[str]] = {}
    for group, names in groups.items():
        if group.startswith("head."):
            convs = [n for n in names if n not in final_names]
            preds = [n for n in names if n in final_names]
            if convs:
                out[f"{group}.convs"] = convs
            if preds:
                out[f"{group}.pred"] = preds
        else:
            out[group] = names
    out.setdefault("decode", [])
    return out


def _group_of(name: str) -> tuple[str, tuple | None]:
    parts = [p for p in name.split("/") if p]
    if not parts:
        return "other", None
    if parts[0] == "backbone" and len(parts) > 2:
        return f"backbone.{_strip_index(parts[1])}", None
    if parts[0] == "neck" and len(parts) > 2:
        return f"neck.{_strip_index(parts[1])}", None
    if parts[0] == "bbox_head" and len(parts) > 3 and parts[1] == "head_module":
        branch = _strip_index(parts[2])
        level = re.findall(r"\d+", parts[2])
        index = re.findall(r"\d+", parts[3]) if len(parts) > 4 else []
        key = (branch, level[-1] if level else "", int(index[-1]) if index else 0)
        return f"head.{branch}", key
    if parts[0] in ("backbone", "neck", "bbox_head"):
        return parts[0], None
    return "decode", None


def _strip_index(part: str) -> str:
    return re.sub(r"(\.\d+)+$", "", part)


def conv_flops(model, imgsz: int) -> dict[str, float]:
    """Multiply-accumulates × 2 of every Conv at batch 1 (shapes by ONNX shape inference)."""
    import onnx
    from onnx import shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 3, imgsz, imgsz)):
        d.ClearField("dim_param")
        d.dim_value = v
    inferred = shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    flops = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        w = weights.get(node.input[1])
        out = shapes.get(node.output[0])
        if not w or not out or len(out) < 4:
            raise RuntimeError(f"cannot size Conv {node.name}: weight {w}, output {out}")
        c_out, c_in_per_group, *kernel = w
        k = 1
        for v in kernel:
            k *= v
        flops[node.name] = 2.0 * c_out * c_in_per_group * k * out[2] * out[3]
    return flops


# ---------------------------------------------------------------- the sensitivity split


@dataclass(frozen=True)
class Split:
    """Preprocessed images with annotations, for AP: neither calibration nor evaluation images."""

    batches: list  # (inputs float32 numpy (n, 3, H, W), metas, image ids)
    ann_file: Path
    category_ids: tuple
    images: int
    source: str
    sha256: str


def sensitivity_images(cell: dict, cache_dir: Path):
    """(CocoDataset subset, description) of the cell's sensitivity split; refuses a too small one."""
    from harness.calibration.data import source_paths
    from harness.data.coco import CocoDataset
    from harness.data.datasets import synth_dataset

    calib, ds = cell["calibration"], cell["dataset"]
    n = calib["sensitivity_images"]
    if n < MIN_SPLIT_IMAGES:
        raise UserError(f"calibration.sensitivity_images is {n}: the sensitivity split needs at least "
                        f"{MIN_SPLIT_IMAGES} images to measure AP differences; raise it (64 is a good start)")
    if calib.get("sensitivity_source"):
        images_dir, ann = source_paths(calib["sensitivity_source"], cache_dir)
        found = CocoDataset.load(images_dir, ann, n, where="calibration.sensitivity_source")
        where = f"calibration.sensitivity_source {ann}"
    elif ds.get("synth"):
        seed = calib["sensitivity_seed"]
        if seed in (ds["synth"]["seed"], calib["seed"]):
            raise UserError(f"calibration.sensitivity_seed {seed} equals the "
                            f"{'evaluation' if seed == ds['synth']['seed'] else 'calibration'} seed: the "
                            "sensitivity split must be neither; pick another seed")
        images_dir, ann = synth_dataset(n, seed, ds["synth"]["size"], cache_dir)
        found = CocoDataset.load(images_dir, ann, n, where="calibration.sensitivity_seed")
        where = f"synth seed {seed}"
    else:
        full = CocoDataset.load(ds["images"], ds["annotations"], None)
        start = (ds.get("limit") or len(full.images)) + calib["images"]
        chosen = full.images[start:start + n]
        found = CocoDataset(full.ann_file, tuple(chosen), full.category_ids, full.category_names)
        where = f"{ds['annotations']} images after limit {ds.get('limit')} + {calib['images']} calibration images"
    if len(found.images) < MIN_SPLIT_IMAGES:
        raise UserError(f"calibration.sensitivity_images: the sensitivity split ({where}) has "
                        f"{len(found.images)} images, fewer than {MIN_SPLIT_IMAGES}; give "
                        "`calibration.sensitivity_source` with more images (not the evaluation or "
                        "calibration split)")
    return found, where


def build_split(found, pre, source: str, batch: int = 8) -> Split:
    import numpy as np

    digest = hashlib.sha256()
    batches = []
    images = list(found.images)
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        prepared = pre([found.read(im) for im in chunk], [im.id for im in chunk])
        x = prepared.inputs.cpu().numpy().astype(np.float32)
        digest.update(x.tobytes())
        batches.append((x, prepared.metas, [im.id for im in chunk]))
    digest.update(str(found.ann_file).encode())
    return Split(batches, found.ann_file, found.category_ids, len(images), source, digest.hexdigest())


# ---------------------------------------------------------------- evaluations (cached)


class Evaluator:
    """AP (and output SQNR) of the fp32 graph or a Q/DQ graph with some Convs kept float."""

    def __init__(self, fp32_onnx: Path, calib, method: str, percentile: float, cache_dir: Path,
                 split: Split, test_cfg, match_iou: float | None = None, smoothing: float | None = None):
        """``match_iou``: also count each Q/DQ graph's detections that differ from the fp32
        graph's (class-aware greedy matching at this IoU, as the alignment analysis does).
        ``smoothing``: ``calibration.smoothing`` (α) for every Q/DQ graph; the fp32 reference
        stays the unsmoothed graph."""
        self.fp32_onnx, self.calib, self.method, self.percentile = Path(fp32_onnx), calib, method, percentile
        self.cache_dir, self.split, self.test_cfg = Path(cache_dir), split, test_cfg
        self.match_iou, self.smoothing = match_iou, smoothing
        self.folder = self.cache_dir / "int8" / "sensitivity"
        self._fp32_outputs = None
        self._fp32_dets = None
        self.evaluations = 0  # evaluations actually run (not served from the cache)
        self.bootstrap = {"samples": 0, "seed": 0, "level": 0.95}  # paired bootstrap of ΔAP (off: 0)
        self._matches: dict = {}
        self._deltas: dict = {}

    def graph(self, exclude) -> Path:
        """The graph for a float set: ``None`` = fp32, else Q/DQ with ``exclude`` kept float."""
        if exclude is None:
            return self.fp32_onnx
        from harness.calibration.qdq import quantize_qdq

        path, _ = quantize_qdq(self.fp32_onnx, self.calib, self.method, self.percentile,
                               self.cache_dir, exclude=tuple(sorted(exclude)), smoothing=self.smoothing)
        return path

    def evaluate(self, exclude) -> dict:
        from harness import cache
        from harness.measure.provenance import file_hash

        graph = self.graph(exclude)
        parts = [file_hash(graph), self.split.sha256, _cfg_repr(self.test_cfg), SQNR_IMAGES, "v1"]
        if self.match_iou is not None:
            parts.append(["differences", self.match_iou])
        key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]

        def build(staged: Path) -> None:
            outputs = self._run(graph)
            dets, ids = self._coco(outputs)
            self._store_detections(graph, dets, ids)
            result = {"ap": self._evaluate(dets, ids), "detections": len(dets)}
            if exclude is not None:
                fp32 = self.fp32_outputs()
                result["boxes_sqnr_db"] = sqnr_db(fp32[0], outputs[0])
                result["scores_sqnr_db"] = sqnr_db(fp32[1], outputs[1])
                if self.match_iou is not None:
                    result.update(self._differences(dets, ids))
            self.evaluations += 1
            staged.write_text(json.dumps(result))

        return json.loads(cache.cached(self.folder / f"{key}.json", build).read_text())

    def _detections_path(self, graph: Path) -> Path:
        from harness.measure.provenance import file_hash

        key = hashlib.sha256(json.dumps([file_hash(graph), self.split.sha256, _cfg_repr(self.test_cfg),
                                         "dets-v1"]).encode()).hexdigest()[:24]
        return self.folder / f"{key}.dets.npz"

    def _store_detections(self, graph: Path, dets: list[dict], ids: list[int]) -> Path:
        """The graph's COCO detections on the split as (N, 7) rows (for the bootstrap), cached."""
        import numpy as np

        from harness import cache

        def build(staged: Path) -> None:
            rotated = any(len(d["bbox"]) != 4 for d in dets)  # #19: no COCOeval matches to bootstrap
            rows = np.asarray([] if rotated else [[d["image_id"], *d["bbox"], d["score"], d["category_id"]]
                                                  for d in dets], dtype=np.float64).reshape(-1, 7)
            with open(staged, "wb") as f:
                np.savez_compressed(f, rows=rows, ids=np.asarray(ids, dtype=np.int64), rotated=rotated)

        return cache.cached(self._detections_path(graph), build)

    def matches(self, exclude):
        """Per-image matches of the graph's detections (:mod:`harness.evaluate.ap_bootstrap`)."""
        import numpy as np

        from harness import cache
        from harness.evaluate.ap_bootstrap import image_matches

        key = None if exclude is None else frozenset(exclude)
        if key not in self._matches:
            graph = self.graph(exclude)
            path = self._detections_path(graph)
            if not (path.exists() and cache.verify(path)):  # evaluated before detections were kept
                dets, ids = self._coco(self.fp32_outputs() if exclude is None else self._run(graph))
                path = self._store_detections(graph, dets, ids)
            with np.load(path) as data:
                rows, ids, rotated = data["rows"], data["ids"].tolist(), bool(data["rotated"])
            self._matches[key] = None if rotated else image_matches(self.split.ann_file, rows, ids)
        return self._matches[key]

    def delta(self, exclude) -> dict | None:
        """Paired bootstrap of ΔAP (this Q/DQ graph − fp32) over the split's images, or None when
        off (``bootstrap['samples']`` 0) or not available (rotated boxes: no COCOeval matches)."""
        if not self.bootstrap.get("samples"):
            return None
        from harness.evaluate.ap_bootstrap import bootstrap_aps, delta_from

        key = frozenset(exclude)
        if key not in self._deltas:
            self.evaluate(exclude)
            samples, seed = self.bootstrap["samples"], self.bootstrap["seed"]
            if None not in self._deltas:  # the fp32 graph's resampled APs, shared by every candidate
                ref = self.matches(None)
                self._deltas[None] = None if ref is None else bootstrap_aps(ref, samples, seed)
            got = self.matches(exclude)
            ref_aps = self._deltas[None]
            self._deltas[key] = None if ref_aps is None or got is None else {
                **delta_from(ref_aps, bootstrap_aps(got, samples, seed), seed, self.bootstrap.get("level", 0.95)),
                "images": self.split.images}
        return self._deltas[key]

    def fp32_outputs(self):
        if self._fp32_outputs is None:
            self._fp32_outputs = self._run(self.fp32_onnx)
        return self._fp32_outputs

    def _run(self, graph: Path):
        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()][:2]
        boxes, scores = [], []
        for x, _, _ in self.split.batches:
            b, s = sess.run(names, {"images": x})
            boxes.append(b.astype(np.float32))
            scores.append(s.astype(np.float32))
        return np.concatenate(boxes), np.concatenate(scores)

    def _coco(self, outputs) -> tuple[list[dict], list[int]]:
        """COCO result entries of raw (boxes, scores) outputs through mmyolo's post-processing."""
        from harness.evaluate.coco_eval import to_coco_detections
        from harness.evaluate.rotated_eval import to_rotated_coco_detections
        from harness.export.host_nms import host_postprocess

        boxes, scores = outputs
        rotated = boxes.shape[-1] == 5  # a rotated model (#19): rotated NMS and rotated-IoU AP
        to_coco = to_rotated_coco_detections if rotated else to_coco_detections
        dets, ids, offset = [], [], 0
        for x, metas, chunk_ids in self.split.batches:
            n = len(chunk_ids)
            for image_id, (b, s, l) in zip(chunk_ids, host_postprocess(
                    boxes[offset:offset + n], scores[offset:offset + n], metas, self.test_cfg)):
                dets.extend(to_coco(image_id, b.numpy(), s.numpy(), l.numpy(),
                                    self.split.category_ids)[0])
            ids.extend(chunk_ids)
            offset += n
        self._rotated = rotated
        return dets, ids

    def _evaluate(self, dets: list[dict], ids: list[int]) -> float:
        from harness.evaluate.coco_eval import evaluate
        from harness.evaluate.rotated_eval import evaluate_rotated

        if getattr(self, "_rotated", False):
            return evaluate_rotated(self.split.ann_file, dets, ids)["stats"]["AP"]
        return evaluate(self.split.ann_file, dets, ids)["stats"]["AP"]

    def _differences(self, dets: list[dict], ids: list[int]) -> dict:
        """Detections missing from / extra to the fp32 graph's, per image, summed."""
        from harness.evaluate.alignment.detsets import from_coco
        from harness.evaluate.alignment.matching import greedy_match

        if self._fp32_dets is None:
            self._fp32_dets = from_coco(self._coco(self.fp32_outputs())[0], ids,
                                        rotated=getattr(self, "_rotated", False))
        got = from_coco(dets, ids, rotated=getattr(self, "_rotated", False))
        missing = extra = matched = 0
        for image_id in ids:
            m = greedy_match(self._fp32_dets[image_id], got[image_id], self.match_iou)
            missing += len(m.unmatched_a)
            extra += len(m.unmatched_b)
            matched += len(m.a_idx)
        return {"differences": missing + extra, "missing": missing, "extra": extra, "matched": matched}

    def conv_sqnr(self, nodes_by_group: dict) -> dict[str, float]:
        """Mean SQNR (dB) of each group's Conv outputs in the fully quantized graph vs fp32."""
        from harness import cache
        from harness.measure.provenance import file_hash

        qdq = self.graph(())
        key = hashlib.sha256(json.dumps([file_hash(qdq), self.split.sha256, SQNR_IMAGES, "conv-sqnr-v1"])
                             .encode()).hexdigest()[:24]

        def build(staged: Path) -> None:
            import numpy as np

            x = np.concatenate([b[0] for b in self.split.batches])[:SQNR_IMAGES]
            names = [n for nodes in nodes_by_group.values() for n in nodes]
            ref = _conv_outputs(self.fp32_onnx, names, x)
            got = _conv_outputs(qdq, names, x)
            out = {}
            for group, nodes in nodes_by_group.items():
                values = [sqnr_db(ref[n], got[n]) for n in nodes if n in ref and n in got]
                if values:
                    out[group] = float(np.mean(values))
            staged.write_text(json.dumps(out))

        out = json.loads(cache.cached(self.folder / f"{key}.json", build).read_text())
        return out


def _conv_outputs(graph: Path, conv_nodes: list[str], x) -> dict:
    """Each named Conv's output tensor, by exposing them as extra graph outputs."""
    import onnx

    from harness.calibration.qdq import session_with_outputs

    model = onnx.load(str(graph))
    wanted = set(conv_nodes)
    tensors = {n.output[0]: n.name for n in model.graph.node if n.op_type == "Conv" and n.name in wanted}
    sess = session_with_outputs(model, list(tensors), optimize=False)
    values = sess.run(list(tensors), {"images": x})
    return {tensors[t]: v for t, v in zip(tensors, values)}


def sqnr_db(ref, got) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when equal)."""
    import numpy as np

    ref = np.asarray(ref, dtype=np.float64)
    noise = float(np.sum((ref - np.asarray(got, dtype=np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(max(signal, 1e-30) / noise))


def _min_finite(*values):
    finite = [v for v in values if v is not None and v != float("inf")]
    return min(finite) if finite else None


def _cfg_repr(cfg) -> str:
    return json.dumps(dict(cfg), sort_keys=True, default=str)


# ---------------------------------------------------------------- analysis and search


def analyse(ev: Evaluator, groups: dict[str, list[str]], flops: dict[str, float]) -> dict:
    """The ranked sensitivity table: quantize-only-this and leave-this-out ΔAP, SQNR, FLOPs share."""
    total = sum(flops.values()) or 1.0
    all_convs = frozenset(n for nodes in groups.values() for n in nodes)
    fp32 = ev.evaluate(None)["ap"]
    full = ev.evaluate(frozenset())
    loss = fp32 - full["ap"]
    sqnr = ev.conv_sqnr({g: n for g, n in groups.items() if n})
    rows = []
    for group, nodes in groups.items():
        row = {"group": group, "convs": len(nodes),
               "flops_fraction": sum(flops.get(n, 0.0) for n in nodes) / total}
        if not nodes:
            row["note"] = "no Conv: never quantized (stays float)"
            rows.append(row)
            continue
        only = ev.evaluate(all_convs - frozenset(nodes))
        left_out = ev.evaluate(frozenset(nodes))
        recovered = left_out["ap"] - full["ap"]
        only_dap = only["ap"] - fp32
        boot = ev.delta(frozenset(nodes)) if hasattr(ev, "delta") else None
        if boot:  # the leave-this-out ΔAP's noise: a ranking gap smaller than this is not evidence
            row.update({"leave_out_se": boot["se"], "leave_out_ci": [boot["ci_low"], boot["ci_high"]]})
        row.update({"only_delta_ap": only_dap, "leave_out_delta_ap": left_out["ap"] - fp32,
                    "recovered_ap": recovered, "score": recovered - only_dap,
                    "recovered_fraction": (recovered / loss) if loss > 0 else None,
                    "only_output_sqnr_db": _min_finite(only.get("boxes_sqnr_db"), only.get("scores_sqnr_db")),
                    "conv_sqnr_db": sqnr.get(group)})
        rows.append(row)
    # rank by both views of a group's cost: the AP its float copy recovers in the int8 graph
    # (leave-this-out) plus the AP it loses quantized alone (quantize-only-this); either alone is
    # noisy on a small split, and a group masked by the others' error shows up in the second
    ranked = sorted((r for r in rows if r["convs"]), key=lambda r: (-r["score"], r["flops_fraction"]))
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    rows = ranked + [r for r in rows if not r["convs"]]
    boot = ev.delta(frozenset()) if hasattr(ev, "delta") else None
    return {"split": ev.split.source, "images": ev.split.images, "method": ev.method,
            "fp32_ap": fp32, "int8_ap": full["ap"], "int8_delta_ap": -loss,
            **({"int8_delta_ap_se": boot["se"], "int8_delta_ap_ci": [boot["ci_low"], boot["ci_high"]],
                "bootstrap": {k: boot[k] for k in ("samples", "seed", "level")}} if boot else {}),
            "int8_output_sqnr_db": _min_finite(full.get("boxes_sqnr_db"), full.get("scores_sqnr_db")),
            "rows": rows}


def cheapest_convs(flops: dict[str, float], share: float) -> list[str]:
    """The Convs kept float by the conv-level step: cheapest first, while their FLOPs together stay
    within ``share`` of all conv FLOPs.

    Per-tensor int8 adds about the same relative noise at every quantized Conv input (on the
    fixture the 57 quantized activations' own SQNR is 27–41 dB, median 33:
    ``benchmarks/results/int8_activation_sqnr_*.md``), and
    the loss builds up from all of them; so for the int8 FLOPs given up, the cheapest Convs (late,
    low-resolution stages) take the most quantization points out of the graph.
    """
    total = sum(flops.values()) or 1.0
    kept, used = [], 0.0
    for name in sorted(flops, key=lambda n: (flops[n], n)):
        if used + flops[name] > share * total + 1e-9:
            break
        kept.append(name)
        used += flops[name]
    return kept


CONV_LEVEL_SHARES = (0.25, 0.5, 1.0)  # of the float room (1 − min_int8_flops) the conv-level step tries


def search_mix(ev: Evaluator, table: dict, groups: dict[str, list[str]], flops: dict[str, float],
               budget: float, min_int8_flops: float, margin_se: float = 1.0) -> dict:
    """Groups to keep float, greedily in ranking order, until the mix meets the budget; then pruned.
    When no group mix meets it, a conv-level step follows: the cheapest Convs float
    (:func:`cheapest_convs`) within 25 %, 50 % and 100 % of the float room the FLOPs floor leaves.

    *Meets the budget*: ΔAP − ``margin_se`` × SE ≥ −budget, SE being the paired bootstrap's
    standard error of ΔAP over the split's images (``ev.bootstrap``; the point estimate alone
    when the bootstrap is off or unavailable).  On a split of a few hundred images a ΔAP near
    the budget is within noise; the margin keeps the search from accepting a mix that met the
    budget by chance.  Candidates are compared by the same margin value.

    A group whose float copy would drop the int8 share of conv FLOPs below
    ``min_int8_flops`` is not taken.  When no mix meets the budget the best
    one evaluated is kept and ``met`` is false.
    """
    total = sum(flops.values()) or 1.0
    fp32 = table["fp32_ap"]
    steps = []

    def nodes_of(kept):
        return frozenset(n for g in kept for n in groups[g])

    def share_of(nodes):
        return 1.0 - sum(flops.get(n, 0.0) for n in nodes) / total

    def int8_share(kept):
        return share_of(nodes_of(kept))

    bootstrap = getattr(ev, "bootstrap", None) or {}
    delta = getattr(ev, "delta", None) if bootstrap.get("samples") else None

    def try_nodes(nodes, kept, action, extra=None):
        ap = ev.evaluate(nodes)["ap"] if nodes else table["int8_ap"]
        boot = delta(nodes) if delta else None
        se = boot["se"] if boot else 0.0
        value = ap - fp32 - margin_se * se
        steps.append({"action": action, "kept_float": list(kept), **(extra or {}), "delta_ap": ap - fp32,
                      "int8_flops_fraction": share_of(nodes), "criterion": value,
                      "meets_budget": value >= -budget,
                      **({"se": boot["se"], "ci_low": boot["ci_low"], "ci_high": boot["ci_high"]}
                         if boot else {})})
        return value, ap, boot

    def try_mix(kept, action):
        return try_nodes(nodes_of(kept), kept, action)

    kept: list[str] = []
    value, ap, boot = try_mix(kept, "all int8")
    best = (value, ap, boot, list(kept), None)
    order = [r["group"] for r in table["rows"] if r["convs"] and r.get("score", r["recovered_ap"]) > 0]
    for group in order:
        if value >= -budget:
            break
        cand = kept + [group]
        if int8_share(cand) < min_int8_flops:
            steps.append({"action": f"skip {group}", "kept_float": cand, "delta_ap": None,
                          "int8_flops_fraction": int8_share(cand),
                          "reason": f"int8 share of conv FLOPs would fall below {min_int8_flops}"})
            continue
        cand_value, cand_ap, cand_boot = try_mix(cand, f"keep {group} float")
        if cand_value > value:  # a group that does not help stays int8
            kept, value, ap, boot = cand, cand_value, cand_ap, cand_boot
            if value > best[0]:
                best = (value, ap, boot, list(kept), None)
    met = value >= -budget
    if met:
        for group in list(reversed(kept[:-1])):
            cand = [g for g in kept if g != group]
            cand_value, cand_ap, cand_boot = try_mix(cand, f"prune {group} (back to int8)")
            if cand_value >= -budget:
                kept, value, ap, boot = cand, cand_value, cand_ap, cand_boot
        best = (value, ap, boot, kept, None)
    else:  # the conv-level step: the cheapest Convs float, the smallest set that meets the budget
        room = max(0.0, 1.0 - min_int8_flops)
        tried = set()
        for part in CONV_LEVEL_SHARES:
            nodes = frozenset(cheapest_convs(flops, room * part))
            if not nodes or nodes in tried:
                continue
            tried.add(nodes)
            label = f"{len(nodes)} cheapest convs"
            cand_value, cand_ap, cand_boot = try_nodes(
                nodes, [label], f"keep the {label} float (≤ {room * part:.1%} of conv FLOPs)",
                {"kept_float_nodes": sorted(nodes)})
            if cand_value > best[0]:
                best = (cand_value, cand_ap, cand_boot, sorted(nodes), "conv")
            if cand_value >= -budget:
                met = True
                break
    value, ap, boot, kept, level = best
    if level == "conv":
        nodes = frozenset(kept)
        whole = [g for g, members in groups.items() if members and set(members) <= nodes]
        partial = {g: sum(1 for n in members if n in nodes) for g, members in groups.items()
                   if members and not set(members) <= nodes and nodes & set(members)}
        record = {"granularity": "conv", "kept_float_groups": whole, "kept_float_partial_groups": partial,
                  "kept_float_nodes": sorted(nodes), "strategy": "cheapest convs first"}
    else:
        nodes = nodes_of(kept)
        record = {"granularity": "group", "kept_float_groups": kept, "kept_float_nodes": sorted(nodes)}
    rule = (f"ΔAP − {margin_se:g} × SE ≥ −{budget}" if boot and margin_se else f"ΔAP ≥ −{budget}")
    return {"ap_budget": budget, "min_int8_flops": min_int8_flops, "met": met,
            "criterion": rule, "margin_se": margin_se,
            "bootstrap": {k: bootstrap.get(k) for k in ("samples", "seed", "level")} if boot else None,
            **record, "int8_conv_flops_fraction": share_of(nodes), "sensitivity_delta_ap": ap - fp32,
            **({"sensitivity_delta_ap_se": boot["se"], "sensitivity_delta_ap_ci": [boot["ci_low"], boot["ci_high"]]}
               if boot else {}),
            "sensitivity_criterion": value,
            "sensitivity_fp32_ap": fp32, "sensitivity_ap": ap, "search": steps,
            **({} if met else {"note": f"no mix met the budget {budget} ({rule}) with at least "
                                       f"{min_int8_flops:.0%} of conv FLOPs int8; kept the best mix found "
                                       f"(ΔAP {ap - fp32:+.4f})"})}


def float_text(mix: dict) -> str:
    """What a mix keeps float, in words: its groups, or its conv-level set."""
    if mix.get("granularity") == "conv":
        n = len(mix.get("kept_float_nodes") or []) or mix.get("kept_float_convs", 0)
        parts = []
        if mix.get("kept_float_groups"):
            parts.append("all of " + ", ".join(mix["kept_float_groups"]))
        if mix.get("kept_float_partial_groups"):
            parts.append("part of " + ", ".join(f"{g} ({k})" for g, k in mix["kept_float_partial_groups"].items()))
        what = f"the {n} cheapest convs" if mix.get("strategy") == "cheapest convs first" else f"{n} convs"
        return what + (f" ({'; '.join(parts)})" if parts else "")
    return ", ".join(mix.get("kept_float_groups") or []) or "none"


def attribution_lines(table: dict, limit: int = 3) -> list[str]:
    """Plain sentences: how much of the int8 ΔAP each group's float copy removes (sensitivity split)."""
    loss = -table["int8_delta_ap"]
    if loss <= 0:
        return [f"int8 costs no AP on the sensitivity split ({table['images']} images)"]
    lines = []
    rows = [r for r in table["rows"] if r.get("convs") and r.get("recovered_fraction") is not None]
    for row in sorted(rows, key=lambda r: -r["recovered_fraction"])[:limit]:
        noise = (f"; leave-this-out ΔAP {row['leave_out_delta_ap']:+.4f} ± {row['leave_out_se']:.4f} SE"
                 if row.get("leave_out_se") is not None else "")
        lines.append(f"{row['recovered_fraction']:.0%} of the int8 ΔAP ({-loss:+.4f}) disappears when "
                     f"{row['group']} stays float ({row['flops_fraction']:.1%} of conv FLOPs; "
                     f"sensitivity split, {table['images']} images{noise})")
    return lines


# ---------------------------------------------------------------- what a runner calls


def int8_graph(ctx, fp32_onnx: Path, test_cfg) -> tuple[Path, dict]:
    """The cell's int8 Q/DQ graph and its facts: plain, ranked (``sensitivity``), or mixed.

    Mixed when the precision is ``int8-mixed`` or ``calibration.ap_budget`` is
    set (budget 0.003 unless given), the float groups searched on the sensitivity
    split unless ``calibration.float_groups`` / ``float_convs`` name them (:func:`given_mix`: no
    split, no table); the ranked table and the mix go into the
    cell's provenance (``int8_sensitivity``, ``int8_mixed``), and with them the
    per-group attribution on the evaluation images (``int8_attribution``, see
    ``attribution.py``; off with ``calibration.attribution_images: 0``).
    """
    import onnx

    from harness.calibration.qdq import quantize_qdq

    cell = ctx.cell
    c = cell["calibration"]
    calib = ctx.calibration_set()
    smoothing = c.get("smoothing")
    path, info = quantize_qdq(fp32_onnx, calib, c["method"], c["percentile"], ctx.cache_dir, smoothing=smoothing)
    mixed = cell["precision"] == "int8-mixed" or c.get("ap_budget") is not None
    if not (mixed or c.get("sensitivity")):
        return path, info
    model = onnx.load(str(fp32_onnx))
    groups = layer_groups(model)
    flops = conv_flops(model, cell["imgsz"])
    given = (c.get("float_groups"), c.get("float_convs")) if mixed else (None, None)
    if given != (None, None):  # a mix chosen earlier: no sensitivity split, no search
        mix = given_mix(groups, flops, given[0] or [], given[1] or [])
        path, mixed_info = quantize_qdq(fp32_onnx, calib, c["method"], c["percentile"], ctx.cache_dir,
                                        exclude=tuple(mix["kept_float_nodes"]), smoothing=smoothing)
        return path, _finite({**mixed_info, "int8_mixed": mix})
    found, where = sensitivity_images(cell, ctx.cache_dir)
    split = build_split(found, ctx.preprocessor("cpu"), where)
    ev = Evaluator(fp32_onnx, calib, c["method"], c["percentile"], ctx.cache_dir, split, test_cfg,
                   smoothing=smoothing)
    ev.bootstrap = bootstrap_settings(c)
    table = analyse(ev, groups, flops)
    info = {**info, "int8_sensitivity": table}
    if mixed:
        budget = c.get("ap_budget")
        budget = 0.003 if budget is None else budget
        mix = search_mix(ev, table, groups, flops, budget, c.get("min_int8_flops", 0.5),
                         c.get("ap_margin_se", 1.0))
        path, mixed_info = quantize_qdq(fp32_onnx, calib, c["method"], c["percentile"], ctx.cache_dir,
                                        exclude=tuple(mix["kept_float_nodes"]), smoothing=smoothing)
        info = {**mixed_info, "int8_sensitivity": table, "int8_mixed": mix}
    info["int8_sensitivity_evaluations_run"] = ev.evaluations
    from harness.calibration.attribution import evaluation_attribution

    attribution = evaluation_attribution(ctx, fp32_onnx, calib, test_cfg, groups, flops, table,
                                         info.get("int8_mixed"))
    if attribution is not None:
        info["int8_attribution"] = attribution
    return path, _finite(info)


def bootstrap_settings(calibration: dict) -> dict:
    """The paired bootstrap of ΔAP a cell's calibration settings ask for (samples 0: off)."""
    return {"samples": int(calibration.get("bootstrap_samples", 500)),
            "seed": int(calibration.get("bootstrap_seed", 0)), "level": 0.95}


def given_mix(groups: dict[str, list[str]], flops: dict[str, float], names: list[str],
              convs: list[str] = ()) -> dict:
    """The mix ``calibration.float_groups`` (layer groups) and/or ``calibration.float_convs`` (Conv
    node names) name, e.g. one an earlier run's search found: no budget and no search, so ``met``
    and the sensitivity ΔAP are None."""
    known = [g for g, nodes in groups.items() if nodes]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"calibration.float_groups: '{unknown[0]}' is not a layer group with "
                        f"convolutions in this model's graph; its groups: {', '.join(known)}")
    every = [n for nodes in groups.values() for n in nodes]
    strangers = [n for n in convs if n not in set(every)]
    if strangers:
        raise UserError(f"calibration.float_convs: '{strangers[0]}' is not a Conv node of this model's graph "
                        f"(its {len(every)} Convs are named like '{every[0]}'); copy the names from an "
                        "earlier run's int8_mixed.kept_float_nodes")
    nodes = sorted({n for g in names for n in groups[g]} | set(convs))
    total = sum(flops.values()) or 1.0
    source = " and ".join(k for k, v in (("calibration.float_groups", names), ("calibration.float_convs", convs)) if v)
    record = {"granularity": "group", "kept_float_groups": list(names)}
    if convs:
        chosen = set(nodes)
        record = {"granularity": "conv",
                  "kept_float_groups": [g for g in known if set(groups[g]) <= chosen],
                  "kept_float_partial_groups": {g: sum(1 for n in groups[g] if n in chosen) for g in known
                                                if not set(groups[g]) <= chosen and chosen & set(groups[g])}}
    return {"source": source or "calibration.float_groups", "ap_budget": None, "met": None,
            **record, "kept_float_nodes": nodes,
            "int8_conv_flops_fraction": 1.0 - sum(flops.get(n, 0.0) for n in nodes) / total,
            "sensitivity_delta_ap": None, "search": []}


def _finite(obj):
    """JSON-safe: infinite SQNR (identical tensors) becomes None."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
