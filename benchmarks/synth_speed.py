"""`detbench synth` per-image cost, one process: this tree against an earlier commit's generator.

Interleaved rounds (old, new, new, old, ...) of ``generate(..., workers=1)`` at 320 px, reporting
wall and CPU milliseconds per image and the new/old ratio of the medians; the two trees' outputs
are compared byte for byte.  On a shared machine only the ratio means something (CPU time is
the steadier of the two); the absolute 5,000-image figure is
``python3 benchmarks/accuracy_pass.py --device cpu --cpu-figures`` on idle cores.

    python3 benchmarks/synth_speed.py --base bdb5d27 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit whose harness/data/synth.py is 'old'")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="synth-speed-"))
    old_src = work / "synth_old.py"
    old_src.write_text(subprocess.run(["git", "-C", str(ROOT), "show", f"{args.base}:harness/data/synth.py"],
                                      check=True, capture_output=True, text=True).stdout)
    mods = {"old": _load(old_src, "synth_old"), "new": _load(ROOT / "harness" / "data" / "synth.py", "synth_new")}
    same = {}
    for size, n in ((320, 40), (96, 30), (640, 6)):
        trees = {k: _tree(m.generate(work / f"cmp-{k}-{size}", n, 11, size, workers=1).parent)
                 for k, m in mods.items()}
        same[f"{n}x{size}px"] = trees["old"] == trees["new"]
    times = {k: [] for k in mods}
    for r in range(args.rounds):
        for k in (("old", "new") if r % 2 == 0 else ("new", "old")):
            out = work / f"{k}{r}"
            t, c = time.perf_counter(), time.process_time()
            mods[k].generate(out, args.images, r, 320, workers=1)
            times[k].append({"wall_ms": (time.perf_counter() - t) / args.images * 1e3,
                             "cpu_ms": (time.process_time() - c) / args.images * 1e3})
            shutil.rmtree(out)
    med = {k: {m: round(statistics.median(x[m] for x in v), 2) for m in ("wall_ms", "cpu_ms")}
           for k, v in times.items()}
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    doc = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"), "base": args.base,
           "git": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip(),
           "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load}",
           "images_per_round": args.images, "rounds": args.rounds, "identical_output": same,
           "median_per_image": med,
           "ratio_new_over_old": {m: round(med["new"][m] / med["old"][m], 3) for m in ("wall_ms", "cpu_ms")},
           "rounds_ms": {k: [{m: round(x[m], 1) for m in x} for x in v] for k, v in times.items()},
           "command": "python3 benchmarks/synth_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"synth_speed_{doc['date']}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    md = [f"# `detbench synth` per image, one process — {doc['date']}", "",
          f"This tree ({doc['git']}) against {args.base}; host: {doc['host']} (shared: compare the "
          f"ratio, not the milliseconds). Command: `{doc['command']}`", "",
          "| tree | wall ms/image (median) | CPU ms/image (median) |", "|---|---|---|",
          *(f"| {k} | {v['wall_ms']} | {v['cpu_ms']} |" for k, v in med.items()),
          f"| new ÷ old | {doc['ratio_new_over_old']['wall_ms']} | {doc['ratio_new_over_old']['cpu_ms']} |", "",
          f"Byte-identical output (images + annotations): {json.dumps(same)}"]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
