"""Does activation smoothing (``calibration.smoothing: α``) cut the all-int8 ΔAP? (#18)

On the fixture (yolov8_synth 320 px, ONNX Runtime CPU EP, TensorRT-style Q/DQ, mse calibration on
32 images of synth seed 3), the all-int8 graph's ΔAP vs the fp32 graph for each α, and without
smoothing, on two splits larger than the int8-mixed matrix's (so that the SE is smaller):

- a *selection* split (synth seed 5, ``--select-images``): α is chosen here;
- a *confirmation* split (synth seed 2, ``--confirm-images``, the evaluation seed): the chosen α
  is only reported here, not chosen.

Also: the ΔAP when only the weights or only the activations are quantized (plain Q/DQ graph), which
says which of the two the loss comes from.  ΔAP ± SE [95 % CI] from a paired bootstrap over
images (500 resamples, seed 0).  Every evaluation is cached in --cache-dir.

    PYTHONPATH=$PWD python3 benchmarks/int8_smoothing_probe.py --cache-dir .detbench
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
BOOT = {"samples": 500, "seed": 0, "level": 0.95}


def _weights_only(qdq: Path, out: Path) -> Path:
    """The Q/DQ graph with every activation Q/DQ pair removed (weights still int8)."""
    import onnx

    model = onnx.load(str(qdq))
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    rename, drop = {}, set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] not in inits:
            q = producer.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                rename[node.output[0]] = q.input[0]
                drop.update({id(node), id(q)})
    nodes = [n for n in model.graph.node if id(n) not in drop]
    for n in nodes:
        n.input[:] = [rename.get(x, x) for x in n.input]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.doc_string = "weights only"
    onnx.save(model, str(out))
    return out


def _activations_only(fp32: Path, qdq: Path, out: Path) -> Path:
    """The Q/DQ graph with every Conv weight back to the fp32 graph's (activations still Q/DQ)."""
    import onnx

    f = onnx.load(str(fp32))
    finit = {i.name: i for i in f.graph.initializer}
    fconv = {n.name: n for n in f.graph.node if n.op_type == "Conv"}
    model = onnx.load(str(qdq))
    producer = {o: n for n in model.graph.node for o in n.output}
    drop, added = set(), set()
    for node in model.graph.node:
        if node.op_type == "Conv" and node.name in fconv:
            dq = producer.get(node.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear":
                name = fconv[node.name].input[1]
                if name not in added:
                    model.graph.initializer.append(finit[name])
                    added.add(name)
                node.input[1] = name
                drop.add(id(dq))
    nodes = [n for n in model.graph.node if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.doc_string = "activations only"
    onnx.save(model, str(out))
    return out


def main(argv=None) -> int:
    from int8_mixed_probe import fixture_graph

    from harness.calibration.sensitivity import Evaluator, build_split
    from harness.data.coco import CocoDataset
    from harness.data.datasets import synth_dataset
    from _results import write_results

    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=".detbench")
    ap.add_argument("--alphas", default="0.5,0.7,0.8,0.9,1.0")
    ap.add_argument("--select-images", type=int, default=1000)
    ap.add_argument("--confirm-images", type=int, default=1000)
    ap.add_argument("--card", default="cpu_" + platform.node())
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = ap.parse_args(argv)
    cache = Path(args.cache_dir).resolve()
    ctx, fp32, test_cfg = fixture_graph(cache)
    pre = ctx.preprocessor("cpu")
    calib = ctx.calibration_set()
    alphas = [float(a) for a in args.alphas.split(",") if a]

    class Variant(Evaluator):  # serves the weights-only / activations-only graphs by name
        extra: dict = {}

        def graph(self, exclude):
            if exclude is not None and len(exclude) == 1 and next(iter(exclude)) in self.extra:
                return self.extra[next(iter(exclude))]
            return super().graph(exclude)

    def split_of(seed: int, n: int, name: str):
        images_dir, ann = synth_dataset(n, seed, 320, cache)
        found = CocoDataset.load(images_dir, ann, n, where=name)
        return build_split(found, pre, f"synth seed {seed} ({n} images)")

    splits = {"selection": split_of(5, args.select_images, "selection split"),
              "confirmation": split_of(2, args.confirm_images, "confirmation split")}
    rows = []
    for split_name, split in splits.items():
        base = Variant(fp32, calib, "mse", 99.99, cache, split, test_cfg)
        base.bootstrap = dict(BOOT)
        qdq = base.graph(())
        folder = cache / "int8" / "probe"
        folder.mkdir(parents=True, exist_ok=True)
        Variant.extra = {"@weights": _weights_only(qdq, folder / f"{qdq.stem}.weights_only.onnx"),
                         "@activations": _activations_only(fp32, qdq, folder / f"{qdq.stem}.activations_only.onnx")}
        t = time.time()
        fp32_ap = base.evaluate(None)["ap"]
        for label, key in (("plain (no smoothing)", frozenset()), ("weights only quantized", frozenset({"@weights"})),
                           ("activations only quantized", frozenset({"@activations"}))):
            d = base.delta(key)
            rows.append({"split": split_name, "images": split.images, "variant": label, "alpha": None,
                         "fp32_ap": fp32_ap, "ap": base.evaluate(key)["ap"], **_iv(d)})
            print(rows[-1], f"{time.time() - t:.0f}s", flush=True)
        for alpha in alphas:
            ev = Variant(fp32, calib, "mse", 99.99, cache, split, test_cfg, smoothing=alpha)
            ev.bootstrap = dict(BOOT)
            d = ev.delta(frozenset())
            rows.append({"split": split_name, "images": split.images, "variant": f"smoothing α={alpha:g}",
                         "alpha": alpha, "fp32_ap": fp32_ap, "ap": ev.evaluate(frozenset())["ap"], **_iv(d)})
            print(rows[-1], f"{time.time() - t:.0f}s", flush=True)
    sel = [r for r in rows if r["split"] == "selection" and r["alpha"] is not None]
    best = max(sel, key=lambda r: r["delta_ap"]) if sel else None
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    doc = {"benchmark": "int8 activation smoothing probe (#18)", "date": datetime.now(timezone.utc).isoformat(),
           "host": platform.node(), "device": "CPU, ONNX Runtime CPU EP", "bootstrap": BOOT,
           "calibration": {"method": "mse", "images": 32, "seed": 3}, "rows": rows,
           "chosen_alpha": best["alpha"] if best else None}

    def iv(r):
        return f"{r['delta_ap']:+.4f} ± {r['se']:.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"

    lines = [f"# int8 activation smoothing on the fixture ({date}, {platform.node()}, CPU only)", "",
             "yolov8_synth 320 px, ONNX Runtime CPU EP, TensorRT-style Q/DQ (symmetric, per-channel weights, "
             "per-tensor activations, float bias), mse calibration on 32 images (synth seed 3). ΔAP of the "
             "all-int8 graph vs the fp32 graph on the same images, ± SE [95 % CI], paired bootstrap over "
             "images (500 resamples, seed 0). α is chosen on the selection split only.", "",
             "| split | images | variant | AP | ΔAP vs fp32 |", "|---|---|---|---|---|"]
    lines += [f"| {r['split']} | {r['images']} | {r['variant']} | {r['ap']:.4f} | {iv(r)} |" for r in rows]
    if best:
        conf = next(r for r in rows if r["split"] == "confirmation" and r["alpha"] == best["alpha"])
        plain = next(r for r in rows if r["split"] == "confirmation" and r["variant"].startswith("plain"))
        lines += ["", f"Chosen on the selection split: α = {best['alpha']:g} ({iv(best)}). On the confirmation "
                      f"split it gives {iv(conf)}, against {iv(plain)} without smoothing."]
    lines += ["", "Command: `PYTHONPATH=$PWD python3 benchmarks/int8_smoothing_probe.py --cache-dir .detbench "
                  f"--select-images {args.select_images} --confirm-images {args.confirm_images}`"]
    write_results(Path(args.out), "int8_smoothing_probe", args.card, date, doc, "\n".join(lines) + "\n")
    return 0


def _iv(d: dict) -> dict:
    return {k: d[k] for k in ("delta_ap", "se", "ci_low", "ci_high")}


if __name__ == "__main__":
    sys.exit(main())
