"""Data for the Trends page, no Streamlit: a cell's *series* across runs (the identity of
``harness.check.series``: an eager and a CUDA-graph run are two series), its change points
(the e-divisive + t-test of ``detbench check``), acknowledgements, the verdict of the
newest run and the provenance diff at each change."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.check import detect, series
from harness.check.changepoint import change_points
from harness.check.verdict import settings_of
from harness.store import CellRecord

from dashboard.analysis import cell_values

LATENCY_METRICS = {"median_ms", "p99_ms", "ms_per_image", "e2e_median_ms"}
HIGHER_IS_BETTER = {"AP", "AP50", "AP75", "throughput_ips"}
RULE = ("Markers: change points of each series (e-divisive means with a t-test, as "
        "`detbench check` finds them: p ≤ 0.001 and at least the matrix's minimum magnitude, "
        "5 % by default, for latency; the AP tolerance for accuracy). Dotted lines: "
        "acknowledged changes (`detbench ack`), where a series restarts. A series is one "
        "model × checkpoint × backend × precision × batch × size × NMS × GPU × timing mode × "
        "eval settings × dataset: runs that differ in any of these are not joined.")


@dataclass
class Series:
    """One cell's series: history rows oldest first (this run's cell last), and its acks."""

    key: str
    series_id: str | None
    rows: list[dict]
    acks: list[Any] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        values = [cell_values(r) for r in self.rows]
        return pd.DataFrame({
            "run_id": [r["run_id"] for r in self.rows],
            "run": [f"{r['run_created_at']:%Y-%m-%d %H:%M} · {r['run_id'][-4:]}" for r in self.rows],
            "run_created_at": [r["run_created_at"] for r in self.rows],
            "status": [r["status"] for r in self.rows],
            "git_sha": [(r.get("git_sha") or "")[:10] for r in self.rows],
            **{m: [v[m] if r["status"] == "ok" else None for v, r in zip(values, self.rows)]
               for m in values[0]}}) if self.rows else pd.DataFrame()


def load_series(store, cell: CellRecord, run) -> Series:
    """The series of ``cell`` (a cell of ``run``) up to that run, with its acks."""
    rows = store.series_candidates(model=cell.model, backend=cell.backend,
                                   precision=cell.precision, batch=cell.batch, imgsz=cell.imgsz,
                                   nms=cell.nms, until=run.id)
    ids = series.assign(rows)
    mine = next((sid for sid, row in zip(ids, rows) if row["id"] == cell.id), None)
    if mine is None:  # a pending cell: follow its plan's newest series
        plan = series.plan_id(cell)
        mine = next((sid for sid, row in reversed(list(zip(ids, rows)))
                     if series.plan_id(_record(row)) == plan), None)
    kept = [row for sid, row in zip(ids, rows) if sid == mine and mine is not None]
    return Series(cell.key, mine, kept, store.acks([mine]) if mine else [])


def _record(row: dict) -> CellRecord:
    return CellRecord(**{k: row[k] for k in CellRecord.__dataclass_fields__})


def markers(frame: pd.DataFrame, metric: str, run, precision: str) -> list[int]:
    """Row positions (in ``frame``) where the metric's series changes level."""
    if frame.empty or metric not in frame:
        return []
    values = frame[metric]
    ok = values.notna()
    if ok.sum() < 3:
        return []
    spec = settings_of(run)
    level = float(values[ok].abs().median()) or 1.0
    if metric in LATENCY_METRICS or metric == "throughput_ips":
        magnitude = spec.min_magnitude
    else:
        magnitude = spec.ap_tolerance.get(precision, 0.002) / level
    positions = list(values[ok].index)
    found = change_points(values[ok].to_numpy(float), min_magnitude=magnitude)
    return [positions[c.index] for c in found]


#: latency columns whose raw samples the store keeps (series name of ``latency_samples``)
SAMPLED = {"median_ms": "model", "e2e_median_ms": "e2e"}


def verdict(s: Series, metric: str, run, precision: str, store=None) -> detect.Verdict | None:
    """The newest run's verdict on ``metric`` as `check` gives it: latency medians with
    the raw samples' standard errors when ``store`` is given, AP, AP50, AP75."""
    frame = s.frame()
    if frame.empty or metric not in frame:
        return None
    spec = settings_of(run)
    rule = detect.Rule(spec.min_magnitude, spec.z, spec.history, spec.min_history,
                       spec.confirm_nights)
    start = _ack_start(s)
    values = frame[metric].iloc[start:].dropna()
    if values.empty:
        return None
    if metric in SAMPLED and store is not None:
        return _sampled_verdict(s, metric, start, rule, store)
    if metric in LATENCY_METRICS:
        return detect.latency_verdict(values.to_numpy(float), rule=rule)
    if metric in ("AP", "AP50", "AP75"):
        return detect.accuracy_verdict(values.to_numpy(float),
                                       spec.ap_tolerance.get(precision, 0.002), rule)
    return None


def _sampled_verdict(s: Series, metric: str, start: int, rule, store) -> detect.Verdict | None:
    from harness.check.stats import summarise

    rows = [r for r in s.rows[start:] if r["status"] == "ok"]
    samples = store.latency_samples_many([r["id"] for r in rows], SAMPLED[metric])
    summaries = [summarise(samples[r["id"]]) for r in rows]
    if not summaries or summaries[-1] is None:  # the newest run has no samples: no verdict
        return None
    nights = [n for n in summaries if n is not None]  # corrupted earlier runs are skipped
    return detect.latency_verdict([n.median for n in nights], [n.rel_se for n in nights], rule)


def _ack_start(s: Series) -> int:
    runs = [r["run_id"] for r in s.rows]
    starts = [runs.index(a.run_id) for a in s.acks if a.run_id in runs]
    return max(starts, default=0)


def ack_rows(s: Series) -> list[dict]:
    frame = s.frame()
    where = dict(zip(frame.get("run_id", []), frame.get("run", [])))
    return [{"run": where.get(a.run_id, a.run_id), "run_id": a.run_id, "reason": a.reason,
             "author": a.author or "", "acknowledged": f"{a.created_at:%Y-%m-%d %H:%M}"}
            for a in s.acks]


def provenance_at(s: Series, position: int) -> list[dict]:
    """What changed (versions, driver, git sha, ...) between the run before ``position``
    and the run at it."""
    if position <= 0 or position >= len(s.rows):
        return []
    before, after = s.rows[position - 1], s.rows[position]
    return series.provenance_diff(series.annotations(_record(before), before),
                                  series.annotations(_record(after), after))
