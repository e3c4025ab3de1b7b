"""Fixed per-cell overhead: the pre-imported worker (forkserver, the default) against one spawned
process per cell (``DETBENCH_WORKER_START=spawn``), issue #12.

Runs real ``detbench run`` matrices of random-weight cells on a small synthetic dataset and reads
what the store recorded for every cell:

- ``wall``: the orchestrator's seconds for the cell (``finished_at - started_at``: worker start or
  fork, the worker's stages, its exit, reading and storing the result);
- ``overhead`` = ``wall - (infer + eval + measure)``: everything that is not the cell's own work
  (process start, imports, config, model build, CUDA context, result handling) — the #12 target;
- ``load``: the worker's load stage, with its breakdown (``import_torch_s``,
  ``mm_imports_config_s``, ``runner_load_s``).

The forkserver run also reports its zygote's one-off import time per module (``zygote.log``),
paid once per run, before its first cell.

    python3 benchmarks/cell_overhead.py --out benchmarks/results            # GPU (cuda)
    python3 benchmarks/cell_overhead.py --out /tmp/x --device cpu --spawn-cells 2

Writes ``cell_overhead_<card>_<date>.json`` and ``.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import write_results  # noqa: E402 (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("yolov8_n", "yolov5_s", "yolov6_n")


def _matrix(name: str, data: Path, device: str, batches: list[int], models: tuple[str, ...]) -> str:
    return f"""name: {name}
models: [{", ".join(f"{{name: {m}, checkpoint: random}}" for m in models)}]
backends: [pytorch]
precisions: [fp32]
batch_sizes: [{", ".join(map(str, batches))}]
image_sizes: [320]
devices: [{device}]
dataset: {{images: {data / 'images'}, annotations: {data / 'annotations.json'}}}
timing: {{warmup: 2, iterations: 10, e2e: false}}
alignment: {{images: 0}}
timeout_s: 900
"""


def _cli(args, env_extra: dict, cwd: Path) -> float:
    env = {**os.environ, **env_extra,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=3000)
    if r.returncode not in (0, 3):
        raise SystemExit(f"detbench {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def _run(mode: str, work: Path, data: Path, device: str, batches: list[int]) -> dict:
    from harness.store import Store

    folder = work / mode
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.yaml").write_text(_matrix(f"overhead-{mode}", data, device, batches, MODELS))
    db, cache = folder / "results.db", folder / "cache"
    wall = _cli(["run", "m.yaml", "--db", f"sqlite:///{db}", "--cache-dir", cache],
                {"DETBENCH_WORKER_START": mode}, folder)
    store = Store(f"sqlite:///{db}", readonly=True)
    run = store.get_run("latest")
    cells = sorted(store.cells(run.id), key=lambda c: (c.started_at is None, c.started_at or 0))
    rows = []
    for c in cells:
        st = c.stage_times or {}
        prov = c.provenance or {}
        if c.started_at is None or c.finished_at is None:  # not run (an interrupted benchmark)
            rows.append({"key": c.key, "status": c.status, "error": c.error, "wall_s": None,
                         "overhead_s": None, "load_s": None, "startup_s": None, "stage_times": {},
                         "load_breakdown": None, "worker_start": None})
            continue
        cell_wall = (c.finished_at - c.started_at).total_seconds()
        work_s = sum(float(st.get(k, 0.0)) for k in ("infer", "eval", "measure"))
        rows.append({"key": c.key, "status": c.status, "error": c.error, "wall_s": round(cell_wall, 3),
                     "overhead_s": round(cell_wall - work_s, 3), "load_s": st.get("load"),
                     "startup_s": st.get("startup"), "stage_times": st,
                     "load_breakdown": prov.get("load_breakdown"),
                     "worker_start": (prov.get("worker") or {}).get("start")})
    zygote = None
    log = cache / "runs" / run.id / "zygote.log"
    if log.is_file():
        line = next((x for x in log.read_text().splitlines() if x.startswith("[detbench] zygote ")), None)
        if line:
            info = json.loads(line.removeprefix("[detbench] zygote "))
            zygote = {k: info.get(k) for k in ("ok", "reason", "total_s", "import_s", "cuda_query",
                                               "cuda_initialized", "nvidia_device_files",
                                               "native_threads", "missing")}
    ok = [r for r in rows if r["status"] == "ok"]
    later = ok[1:]
    summary = {
        "cells": len(rows), "ok": len(ok), "run_wall_s": round(wall, 2),
        "worker_start": sorted({str(r["worker_start"]) for r in ok}),  # forkserver fell back: spawn
        "first_cell_overhead_s": ok[0]["overhead_s"] if ok else None,
        "median_overhead_s": _median([r["overhead_s"] for r in ok]),
        "median_overhead_after_first_s": _median([r["overhead_s"] for r in later]),
        "max_overhead_after_first_s": max((r["overhead_s"] for r in later), default=None),
        "median_load_s": _median([r["load_s"] for r in ok if r["load_s"] is not None]),
        "median_load_after_first_s": _median([r["load_s"] for r in later if r["load_s"] is not None]),
    }
    return {"mode": mode, "run": run.id, "summary": summary, "zygote": zygote, "cells": rows}


def _median(values):
    return round(statistics.median(values), 3) if values else None


def _card(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device).index or 0)
    import platform

    return f"cpu-{os.cpu_count()}core-{platform.machine()}"


def _python_facts() -> dict:
    """What makes imports slow or fast on this host: bytecode caching and the mm* install."""
    out = {"python": sys.version.split()[0], "dont_write_bytecode": bool(sys.flags.dont_write_bytecode),
           "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"), "cpus": os.cpu_count()}
    try:
        import importlib.util

        spec = importlib.util.find_spec("mmdet")
        root = Path(list(spec.submodule_search_locations)[0])
        out["mmdet_dir"] = str(root)
        out["mmdet_pyc_files"] = sum(1 for _ in root.rglob("*.pyc"))
    except Exception as exc:  # informative only
        out["mmdet_dir"] = f"not found: {exc}"
    return out


def _markdown(doc: dict) -> str:
    lines = [f"# Fixed per-cell overhead — {doc['card']} — {doc['date']}", "",
             f"detbench {doc['git']}, command: `{doc['command']}`", "",
             f"Cells: random-weight {', '.join(MODELS)}, PyTorch fp32, 320 px, {doc['images']} synthetic "
             "images, warmup 2 + 10 timed iterations. overhead = cell wall − (infer + eval + measure).", "",
             "| run (cells' worker start) | cells ok | run s | first cell overhead s | median overhead s (after first) | "
             "max overhead s (after first) | median load s (after first) |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        s = r["summary"]
        lines.append(f"| {r['mode']} ({', '.join(s.get('worker_start') or ['?'])}) | {s['ok']}/{s['cells']} | {s['run_wall_s']} | {s['first_cell_overhead_s']} | "
                     f"{s['median_overhead_after_first_s']} | {s['max_overhead_after_first_s']} | "
                     f"{s['median_load_after_first_s']} |")
    for r in doc["runs"]:
        lines += ["", f"## {r['mode']} (run {r['run']})", "",
                  "| cell | status | wall s | overhead s | startup s | load s | infer s | eval s | measure s | "
                  "load breakdown |", "|---|---|---|---|---|---|---|---|---|---|"]
        for c in r["cells"]:
            st = c["stage_times"]
            lines.append(f"| {c['key']} | {c['status']} | {c['wall_s']} | {c['overhead_s']} | "
                         f"{st.get('startup', '')} | {st.get('load', '')} | {st.get('infer', '')} | "
                         f"{st.get('eval', '')} | {st.get('measure', '')} | "
                         f"{json.dumps(c['load_breakdown']) if c['load_breakdown'] else ''} |")
        if r["zygote"]:
            z = r["zygote"]
            slow = sorted(z["import_s"].items(), key=lambda kv: -kv[1])[:6]
            lines += ["", f"Zygote (once per run, before the first cell): ready {z['ok']}"
                      f"{' (' + z['reason'] + ')' if z.get('reason') else ''}, {z['total_s']} s; "
                      f"CUDA questions answered by a helper process: {json.dumps(z.get('cuda_query'))}; CUDA initialised: "
                      f"{z['cuda_initialized']}; NVIDIA device files open: {z['nvidia_device_files'] or 'none'}; "
                      f"slowest: " + ", ".join(f"{Path(k).name} {v} s" for k, v in slow)]
    lines += ["", f"Python on this host: {json.dumps(doc['python'])}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--fork-cells", type=int, default=6, choices=(3, 6),
                    help="3 (batch 16) or 6 (batch 1 and 16) cells of the three models")
    ap.add_argument("--spawn-cells", type=int, default=6, choices=(0, 3, 6))
    ap.add_argument("--work", type=Path, default=Path("/tmp/detbench-cell-overhead"))
    ap.add_argument("--spawn-from", type=Path,
                    help="with --spawn-cells 0: take the spawn run from this earlier JSON of the script "
                         "(same card; its date and commit are kept with it)")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    data = args.work / "data"
    _cli(["synth", "--out", data, "--images", args.images, "--seed", 0, "--size", 320], {}, args.work)
    card = _card(args.device)
    doc = {"card": card, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
           "git": os.environ.get("DETBENCH_GIT_SHA") or subprocess.run(
               ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "device": args.device, "images": args.images, "python": _python_facts(),
           "command": "python3 benchmarks/cell_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "runs": []}
    # forkserver first: the first interpreter after an install compiles the bytecode, and that
    # one-off cost then falls on the zygote, not on a spawned cell
    plan = [("forkserver", [1, 16] if args.fork_cells == 6 else [16])]
    if args.spawn_cells:
        plan.append(("spawn", [1, 16] if args.spawn_cells == 6 else [16]))
    for mode, batches in plan:
        doc["runs"].append(_run(mode, args.work, data, args.device, batches))
        print(json.dumps(doc["runs"][-1]["summary"]), flush=True)
    if args.spawn_from and not args.spawn_cells:
        earlier = json.loads(args.spawn_from.read_text())
        if earlier["card"] != card:
            raise SystemExit(f"--spawn-from {args.spawn_from} was measured on {earlier['card']}, not {card}")
        for r in earlier["runs"]:
            if r["mode"] == "spawn":
                r["summary"].setdefault("worker_start", sorted({str(c["worker_start"]) for c in r["cells"]
                                                                if c["status"] == "ok"}))
                doc["runs"].append({**r, "mode": f"spawn (from {args.spawn_from.name}: {earlier['date']}, "
                                                 f"detbench {earlier['git']})"})
    write_results(args.out, "cell_overhead", card, doc["date"], doc, _markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
