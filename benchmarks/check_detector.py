"""How well does `detbench check` find regressions?  Simulated nightly histories.

Noise comes from the repository's real GPU latency samples (benchmarks/results/*.db and
h100/*.db: every ok cell with >= 100 raw CUDA-event samples).  For a series at a target
coefficient of variation c, one source cell is picked and its samples rescaled around
their median so that their CV is c (x -> 1 + (x / median - 1) * c / cv_source), which
keeps the real shape: skew, outliers, slow drift.  Each night draws 200 samples as 10
contiguous blocks of 20 from random offsets (a block bootstrap, so the within-run drift
of the real GPU carries over), and the whole night is scaled by one more real block's
median with ``--night-level`` (a stress model of night-to-night level shifts, also
from the real samples: their multi-modal clock states make it harsh).  The detector sees
only what `detbench check` sees: each night's median and its standard error.

Latency: 20 step-free nights, then a step of +3/+5/+10 %; the verdict is taken after
nights 1, 2, 3 of the step.  False alarms: 30 step-free nights, a verdict every night
once the baseline is long enough, counted per 1,000 series-nights.
Accuracy: AP 0.6 with Gaussian night jitter (0 or 0.0005: the repository holds no
repeated AP of one cell, and H100/H200 gave identical AP), steps -0.002 / -0.005.

    PYTHONPATH=. python3 benchmarks/check_detector.py [--series 1000] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.check.detect import CONFIRMED, SUSPECT, Rule, accuracy_verdict, latency_verdict  # noqa: E402
from harness.check.stats import summarise  # noqa: E402
from harness.store import Store, upgrade  # noqa: E402

DBS = ["benchmarks/results/gpu.db", "benchmarks/results/gpu_fixture.db",
       "benchmarks/results/h100/gpu.db", "benchmarks/results/h100/gpu_fixture.db"]
CVS = [0.01, 0.02, 0.05, 0.10, 0.20]
STEPS = [0.03, 0.05, 0.10]
BEFORE, AFTER, NULL_NIGHTS = 20, 3, 30
SAMPLES, BLOCK = 200, 20


def real_sources() -> list[dict]:
    """Raw model-latency samples of every ok cell, read through the store (copies upgraded)."""
    sources = []
    with tempfile.TemporaryDirectory() as tmp:
        for rel in DBS:
            copy = Path(tmp) / rel.replace("/", "_")
            shutil.copy(ROOT / rel, copy)
            url = f"sqlite:///{copy}"
            upgrade(url)
            with Store(url, readonly=True) as store:
                for run in store.list_runs():
                    for cell in store.cells(run.id, status="ok"):
                        values = np.asarray(store.latency_samples(cell.id), dtype=float)
                        if values.size >= 100:
                            gpu = (cell.provenance or {}).get("gpu_name", "?")
                            sources.append({"db": rel, "key": cell.key, "gpu": gpu,
                                            "values": values,
                                            "cv": float(values.std() / values.mean())})
    return sources


class NightMaker:
    def __init__(self, source: dict, cv: float, rng: np.random.Generator,
                 night_level: bool = False) -> None:
        self.night_level = night_level
        x = source["values"]
        rel = (x / np.median(x) - 1.0) * cv / source["cv"]
        self.scaled = np.clip(1.0 + rel, 0.05, None)
        self.rng = rng

    def _blocks(self, count: int) -> np.ndarray:
        starts = self.rng.integers(0, len(self.scaled) - BLOCK + 1, count)
        return np.concatenate([self.scaled[s:s + BLOCK] for s in starts])

    def night(self, factor: float) -> tuple[float, float]:
        level = float(np.median(self._blocks(1))) if self.night_level else 1.0
        summary = summarise(self._blocks(SAMPLES // BLOCK) * level * factor)
        return summary.median, summary.rel_se


def latency_case(sources, cv, step, series, rule, rng, night_level) -> dict:
    within = {1: [0, 0], 2: [0, 0], 3: [0, 0]}  # nights -> [suspect-or-worse, confirmed]
    for _ in range(series):
        maker = NightMaker(sources[rng.integers(len(sources))], cv, rng, night_level)
        nights = [maker.night(1.0) for _ in range(BEFORE)]
        nights += [maker.night(1.0 + step) for _ in range(AFTER)]
        first_flag = first_confirm = None
        for after in range(1, AFTER + 1):
            upto = nights[:BEFORE + after]
            state = latency_verdict([m for m, _ in upto], [s for _, s in upto], rule).state
            if state in (SUSPECT, CONFIRMED) and first_flag is None:
                first_flag = after
            if state == CONFIRMED and first_confirm is None:
                first_confirm = after
        for j in within:
            within[j][0] += first_flag is not None and first_flag <= j
            within[j][1] += first_confirm is not None and first_confirm <= j
    return {"flagged_within": {j: v[0] / series for j, v in within.items()},
            "confirmed_within": {j: v[1] / series for j, v in within.items()}}


def latency_null(sources, cv, series, rule, rng, night_level) -> dict:
    confirmed = suspect = evaluated = 0
    for _ in range(series):
        maker = NightMaker(sources[rng.integers(len(sources))], cv, rng, night_level)
        nights = [maker.night(1.0) for _ in range(NULL_NIGHTS)]
        medians, errors = [m for m, _ in nights], [s for _, s in nights]
        for t in range(rule.min_history + 1, NULL_NIGHTS + 1):
            state = latency_verdict(medians[:t], errors[:t], rule).state
            evaluated += 1
            confirmed += state == CONFIRMED
            suspect += state == SUSPECT
    return {"series_nights": evaluated, "false_confirmed_per_1000": 1000 * confirmed / evaluated,
            "false_suspect_per_1000": 1000 * suspect / evaluated}


def accuracy_case(jitter, step, tolerance, series, rule, rng) -> dict:
    nights = BEFORE + AFTER if step else NULL_NIGHTS
    within = {1: [0, 0], 2: [0, 0], 3: [0, 0]}
    confirmed = evaluated = 0
    for _ in range(series):
        ap = 0.6 + jitter * rng.standard_normal(nights)
        if step:
            ap[BEFORE:] += step
            states = [accuracy_verdict(ap[:BEFORE + a], tolerance, rule).state
                      for a in range(1, AFTER + 1)]
            for j in within:
                within[j][0] += any(s in (SUSPECT, CONFIRMED) for s in states[:j])
                within[j][1] += any(s == CONFIRMED for s in states[:j])
        else:
            for t in range(2, nights + 1):
                evaluated += 1
                confirmed += accuracy_verdict(ap[:t], tolerance, rule).state == CONFIRMED
    if step:
        return {"flagged_within": {j: v[0] / series for j, v in within.items()},
                "confirmed_within": {j: v[1] / series for j, v in within.items()}}
    return {"series_nights": evaluated, "false_confirmed_per_1000": 1000 * confirmed / evaluated}


def markdown(result: dict) -> str:
    rule = result["rule"]
    lines = [f"# detbench check: detector evaluation ({result['date']})", "",
             f"{result['series']} simulated series per case; noise resampled from "
             f"{len(result['sources'])} real GPU cells ({', '.join(result['gpus'])}), "
             f"noise model: {result['noise']}; rule: "
             f"min magnitude {rule['min_magnitude']:.0%}, z {rule['z']}, confirmation "
             f"{rule['confirm']} consecutive bad nights, min history {rule['min_history']}, "
             f"history {rule['history']}. Command: `{result['command']}`.", "",
             "## Latency steps", "",
             "| CV | step | flagged ≤1 night | confirmed ≤1 | confirmed ≤2 | confirmed ≤3 |",
             "|---|---|---|---|---|---|"]
    for row in result["latency"]:
        f, c = row["flagged_within"], row["confirmed_within"]
        lines.append(f"| {row['cv']:.0%} | +{row['step']:.0%} | {f['1']:.1%} | {c['1']:.1%} | "
                     f"{c['2']:.1%} | {c['3']:.1%} |")
    lines += ["", "## Latency, step-free series", "",
              "| CV | series-nights | false confirmed / 1,000 | false suspect / 1,000 |",
              "|---|---|---|---|"]
    for row in result["latency_null"]:
        lines.append(f"| {row['cv']:.0%} | {row['series_nights']} | "
                     f"{row['false_confirmed_per_1000']:.2f} | {row['false_suspect_per_1000']:.2f} |")
    lines += ["", "## Accuracy (AP)", "",
              "| jitter (sd) | tolerance | step | flagged ≤1 | confirmed ≤2 | confirmed ≤3 | "
              "false confirmed / 1,000 |", "|---|---|---|---|---|---|---|"]
    for row in result["accuracy"]:
        if row["step"]:
            f, c = row["flagged_within"], row["confirmed_within"]
            lines.append(f"| {row['jitter']} | {row['tolerance']} | {row['step']:+.3f} | "
                         f"{f['1']:.1%} | {c['2']:.1%} | {c['3']:.1%} | |")
        else:
            lines.append(f"| {row['jitter']} | {row['tolerance']} | none | | | | "
                         f"{row['false_confirmed_per_1000']:.2f} |")
    target = result["target"]
    lines += ["", f"**Target** (+5 % at CV ≤ 5 % confirmed within 2 nights in ≥ 95 %; ≤ 1 false "
              f"confirmed alarm per 1,000 series-nights): worst detection {target['worst_detection']:.1%}, "
              f"worst false-alarm rate {target['worst_false_per_1000']:.2f} → "
              f"**{'MET' if target['met'] else 'NOT MET'}**.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--night-level", action="store_true",
                        help="stress model: scale each night by a real block median too")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rule = Rule()
    started = time.time()
    sources = real_sources()
    result = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "series": args.series,
              "command": "PYTHONPATH=. python3 benchmarks/check_detector.py "
                         f"--series {args.series} --seed {args.seed}"
                         + (" --night-level" if args.night_level else ""),
              "noise": "night-level" if args.night_level else "within-run",
              "rule": rule.__dict__, "gpus": sorted({s["gpu"] for s in sources}),
              "sources": [{k: s[k] for k in ("db", "key", "gpu", "cv")} for s in sources],
              "latency": [], "latency_null": [], "accuracy": []}
    for cv in CVS:
        for step in STEPS:
            row = latency_case(sources, cv, step, args.series, rule, rng, args.night_level)
            result["latency"].append({"cv": cv, "step": step, **row})
            print(f"cv {cv:.0%} step +{step:.0%}: {row}", flush=True)
        row = latency_null(sources, cv, args.series, rule, rng, args.night_level)
        result["latency_null"].append({"cv": cv, **row})
        print(f"cv {cv:.0%} null: {row}", flush=True)
    for jitter in (0.0, 0.0005):
        for tolerance in (0.002, 0.005):
            for step in (0.0, -0.002, -0.005):
                row = accuracy_case(jitter, step, tolerance, args.series, rule, rng)
                result["accuracy"].append({"jitter": jitter, "tolerance": tolerance,
                                           "step": step, **row})
    result = json.loads(json.dumps(result))  # int night keys -> strings, as in the file
    detection = [r["confirmed_within"]["2"] for r in result["latency"]
                 if r["step"] == 0.05 and r["cv"] <= 0.05]
    false = [r["false_confirmed_per_1000"] for r in result["latency_null"] if r["cv"] <= 0.05]
    result["target"] = {"worst_detection": min(detection), "worst_false_per_1000": max(false),
                        "met": min(detection) >= 0.95 and max(false) <= 1.0}
    result["elapsed_s"] = round(time.time() - started, 1)
    out = Path(args.out)
    stem = "check_detector" + ("_night_level" if args.night_level else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
