"""``detbench check``: every cell of a run against its series' history (or one baseline run).

Reads the store only through :class:`harness.store.Store`; builds :class:`Finding`
records (one per cell x metric) that :mod:`harness.check.render` prints.
"""
from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from harness.check import detect, series
from harness.check.findings import FAILING, NEW, SEVERITY, Finding, Report
from harness.check.stats import summarise, two_run_test
from harness.errors import UserError
from harness.matrix import CheckSpec
from harness.models import box_types

#: two-run mode: the U test's significance level
TWO_RUN_ALPHA = 0.001
_LATENCY = {"latency": "model", "e2e latency": "e2e"}


def settings_of(run) -> CheckSpec:
    """The ``check:`` section of the run's own matrix (defaults where absent)."""
    try:
        data = yaml.safe_load(run.matrix_yaml or "") or {}
    except yaml.YAMLError:
        data = {}
    section = data.get("check") if isinstance(data, dict) else None
    try:
        return CheckSpec.model_validate(section or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"run {run.id}: matrix `check.{where}`: {err['msg']}; fix the matrix "
                        "and rerun, or check with a run whose matrix is valid") from None


def _rule(spec: CheckSpec, history: int | None) -> detect.Rule:
    return detect.Rule(min_magnitude=spec.min_magnitude, z=spec.z,
                       history=history or spec.history, min_history=spec.min_history,
                       confirm=spec.confirm_nights)


def check(store, run_ref: str = "latest", *, baseline: str | None = None,
          history: int | None = None) -> Report:
    """Judge every cell of ``run_ref`` (an id, prefix or ``latest``)."""
    if baseline is not None and history is not None:
        raise UserError("give --baseline RUN or --history N, not both")
    if history is not None and history < 2:
        raise UserError(f"--history must be at least 2 runs, got {history}")
    run = store.get_run(run_ref)
    spec = settings_of(run)
    rule = _rule(spec, history)
    ctx = _Context(store, run, spec, rule)
    if baseline is not None:
        base = store.get_run(baseline)
        findings, no_series = ctx.against_run(base)
        mode, base_id = "baseline", base.id
    else:
        findings, no_series = ctx.against_history(), []
        mode, base_id = "history", None
    findings.sort(key=lambda f: (SEVERITY.get(f.state, 9), -abs(f.change or 0), f.cell, f.metric))
    settings = {**spec.model_dump(), "history": rule.history}
    return Report(run.to_dict(), mode, base_id, settings, findings, ctx.warnings, no_series)


class _Context:
    def __init__(self, store, run, spec: CheckSpec, rule: detect.Rule) -> None:
        self.store, self.run, self.spec, self.rule = store, run, spec, rule
        self.warnings: list[str] = []
        self._order: dict[str, int] = {}

    # -- history mode -----------------------------------------------------------

    def against_history(self) -> list[Finding]:
        findings: list[Finding] = []
        for cell in self.store.cells(self.run.id):
            if cell.status in ("pending", "running"):
                self.warnings.append(f"cell {cell.key} is still {cell.status}: not checked")
                continue
            findings += self._cell_history(cell)
        return findings

    def _series_rows(self, cell) -> tuple[str | None, list[dict]]:
        rows = self.store.series_candidates(model=cell.model, backend=cell.backend,
                                            precision=cell.precision, batch=cell.batch,
                                            imgsz=cell.imgsz, nms=cell.nms, until=self.run.id)
        ids = series.assign(rows)
        mine = next((sid for sid, row in zip(ids, rows) if row["id"] == cell.id), None)
        earlier = [row for sid, row in zip(ids, rows)
                   if sid == mine and mine is not None and row["run_id"] != self.run.id]
        if mine is not None:
            earlier = self._after_ack(mine, earlier)
        return mine, earlier[-self.rule.history:]

    def _after_ack(self, sid: str, rows: list[dict]) -> list[dict]:
        acks = self.store.acks([sid])
        if not acks:
            return rows
        if not self._order:
            self._order = {r.id: i for i, r in enumerate(reversed(self.store.list_runs()))}
        order = self._order
        mine = order.get(self.run.id, 0)
        acks = [a for a in acks if order.get(a.run_id, -1) <= mine]
        if not acks:
            return rows
        start = order[acks[-1].run_id]
        return [row for row in rows if order.get(row["run_id"], -1) >= start]

    def _cell_history(self, cell) -> list[Finding]:
        sid, rows = self._series_rows(cell)
        if not rows:
            restarted = [a for a in self.store.acks([sid]) if a.run_id == self.run.id] if sid else []
            detail = (f"series restarted here (acknowledged: {restarted[-1].reason})" if restarted
                      else "first run of this series")
            return [Finding(cell.key, sid, "status", NEW, detail=detail)]
        current = {**self._row_of(cell), "status": cell.status}
        out = [self._status(cell, sid, rows[-1], current)]
        if cell.status != "ok":
            return out
        ok_rows = [r for r in rows if r["status"] == "ok"]
        for metric, kind in _LATENCY.items():
            if (kind == "e2e") and not cell.latency_e2e:
                continue
            out.append(self._latency(cell, sid, ok_rows, current, metric, kind))
        tol = self.spec.ap_tolerance.get(cell.precision, self.spec.ap_tolerance.get("fp32", 0.002))
        same_boxes = self._same_box_type(cell, ok_rows)
        for metric, key in (("AP", "ap"), ("AP50", "ap50")):
            found = self._accuracy(cell, sid, same_boxes, current, metric,
                                   lambda r, key=key: r.get(key), tol)
            if found:
                out.append(found)
        out += self._alignment(cell, sid, ok_rows, current)
        return [f for f in out if f is not None]

    def _same_box_type(self, cell, rows: list[dict]) -> list[dict]:
        """Rows whose AP is the same metric as the cell's: rotated-IoU AP (#19) and COCO bbox
        AP are never compared (a series never mixes them; this guards stores written by hand)."""
        mine = box_types.of_cell(cell)
        same = [r for r in rows if box_types.of_cell(r) == mine]
        if len(same) < len(rows):
            self.warnings.append(f"cell {cell.key}: {len(rows) - len(same)} earlier run(s) measured "
                                 f"AP on other than {mine} boxes: left out of its AP history")
        return same

    def _row_of(self, cell) -> dict:
        run = self.run
        return {**{k: getattr(cell, k) for k in cell.__dataclass_fields__}, "run_id": run.id,
                "git_sha": run.git_sha, "detbench_version": run.detbench_version,
                "run_environment": run.environment}

    def _status(self, cell, sid, prev: dict, current: dict) -> Finding:
        was, now = prev["status"], cell.status
        state = "ok"
        if now in ("failed", "skipped") and was == "ok":
            state = "confirmed"
        elif now == "failed":
            state = FAILING
        detail = f"{was} -> {now}" + (f" ({cell.stage}: {cell.error})" if cell.error else "")
        return Finding(cell.key, sid, "status", state, detail=detail,
                       first_bad_run=self.run.id if state == "confirmed" else None,
                       baseline_run=prev["run_id"],
                       provenance_diff=self._diff(prev, current) if state != "ok" else [])

    def _nights(self, rows: list[dict], kind: str) -> list[tuple[dict, Any, list[float]]]:
        samples = self.store.latency_samples_many([r["id"] for r in rows], kind)
        nights = []
        for row in rows:
            summary = summarise(samples[row["id"]])
            if summary is None:
                self.warnings.append(f"run {row['run_id']}: cell {row['key']} has no {kind} "
                                     "latency samples: that run is skipped")
                continue
            nights.append((row, summary, samples[row["id"]]))
        return nights

    def _latency(self, cell, sid, ok_rows, current, metric, kind) -> Finding | None:
        nights = self._nights(ok_rows + [current], kind)
        if not nights or nights[-1][0] is not current:
            return None
        values = [s.median for _, s, _ in nights]
        verdict = detect.latency_verdict(values, [s.rel_se for _, s, _ in nights], self.rule)
        previous = nights[-2] if len(nights) > 1 else None
        two = two_run_test(previous[2], nights[-1][2]) if previous else None
        return self._finding(cell, sid, metric, verdict, nights, values[-1], two,
                             relative=True)

    def _finding(self, cell, sid, metric, verdict, nights, after, two, *, relative) -> Finding:
        rows = [n[0] for n in nights]
        at = verdict.first_bad if verdict.first_bad is not None else len(rows) - 1
        first, before_row = rows[at], rows[at - 1] if at > 0 else None
        bad = verdict.state in ("suspect", "confirmed")
        changed = bad or verdict.state == "improved"
        detail = f"baseline: {verdict.baseline_runs} run(s)"
        if verdict.state == detect.INSUFFICIENT:
            detail = (f"{len(rows) - 1} earlier run(s); a verdict needs {self.rule.min_history}"
                      if relative else "no earlier run")
        return Finding(cell.key, sid, metric, verdict.state, verdict.baseline, after,
                       verdict.change, verdict.pvalue,
                       first_bad_run=first["run_id"] if bad else None,
                       baseline_run=before_row["run_id"] if before_row else None,
                       baseline_runs=verdict.baseline_runs, detail=detail,
                       two_run=two.to_dict() if two else None,
                       provenance_diff=self._diff(before_row, first) if changed and before_row else [])

    def _accuracy(self, cell, sid, ok_rows, current, metric, get, tolerance) -> Finding | None:
        nights = [(r, None, None) for r in ok_rows + [current] if get(r) is not None]
        if not nights or nights[-1][0] is not current:
            return None
        verdict = detect.accuracy_verdict([get(r) for r, _, _ in nights], tolerance, self.rule)
        finding = self._finding(cell, sid, metric, verdict, nights, get(current), None,
                                relative=False)
        finding.detail += f"; tolerance {tolerance}"
        return finding

    def _alignment(self, cell, sid, ok_rows, current) -> list[Finding]:
        mine = self.store.alignment(cell.id)
        if not mine:
            return []
        records = {r["id"]: self.store.alignment(r["id"]) for r in ok_rows}
        rows = [r for r in ok_rows if records.get(r["id"])]
        records[cell.id] = mine
        out = []
        for metric, key, tol in (("matched %", "matched_pct", self.spec.matched_pct_tolerance),
                                 ("class flips", "class_flips", 0.0)):
            sign = -1.0 if key == "class_flips" else 1.0  # more flips is worse
            found = self._accuracy(cell, sid, rows, current, metric,
                                   lambda r: _signed(records.get(r["id"]), key, sign), tol)
            if found:
                for attr in ("before", "after", "change"):
                    value = getattr(found, attr)
                    setattr(found, attr, None if value is None else sign * value)
                out.append(found)
        return out

    def _diff(self, before: dict | None, after: dict) -> list[dict]:
        if before is None:
            return []
        from harness.store import CellRecord

        def cell_of(row):
            return CellRecord(**{k: row[k] for k in CellRecord.__dataclass_fields__})

        return series.provenance_diff(series.annotations(cell_of(before), before),
                                      series.annotations(cell_of(after), after))

    # -- baseline mode ------------------------------------------------------------

    def against_run(self, base) -> tuple[list[Finding], list[str]]:
        base_cells = self.store.cells(base.id)
        by_series = {series.series_id(c, base.environment): c for c in base_cells}
        by_plan = {series.plan_id(c): c for c in base_cells}
        findings, no_series = [], []
        for cell in self.store.cells(self.run.id):
            sid = series.series_id(cell, self.run.environment)
            other = by_series.get(sid) if sid else by_plan.get(series.plan_id(cell))
            if other is None:
                no_series.append(cell.key)
                findings.append(Finding(cell.key, sid, "status", NEW,
                                        detail=f"no series in baseline run {base.id}"))
                continue
            findings += self._pair(cell, sid, other, base)
        return findings, no_series

    def _pair(self, cell, sid, other, base) -> list[Finding]:
        prev = {**{k: getattr(other, k) for k in other.__dataclass_fields__},
                "run_id": base.id, "git_sha": base.git_sha,
                "detbench_version": base.detbench_version, "run_environment": base.environment}
        current = self._row_of(cell)
        out = [self._status(cell, sid, prev, current)]
        if cell.status != "ok" or other.status != "ok":
            return out
        diff = self._diff(prev, current)
        for metric, kind in _LATENCY.items():
            samples = self.store.latency_samples_many([other.id, cell.id], kind)
            two = two_run_test(samples[other.id], samples[cell.id])
            if two is None:
                continue
            change = two.ratio - 1.0
            worse = (two.pvalue <= TWO_RUN_ALPHA and two.ci_low > 1.0
                     and two.ci_high - 1.0 >= self.spec.min_magnitude)
            better = (two.pvalue <= TWO_RUN_ALPHA and two.ci_high < 1.0
                      and 1.0 - two.ci_low >= self.spec.min_magnitude)
            state = "confirmed" if worse else "improved" if better else "ok"
            out.append(Finding(cell.key, sid, metric, state,
                               summarise(samples[other.id]).median,
                               summarise(samples[cell.id]).median, change, two.pvalue,
                               first_bad_run=self.run.id if worse else None, baseline_run=base.id,
                               baseline_runs=1, detail="Mann-Whitney U on raw samples",
                               two_run=two.to_dict(), provenance_diff=diff if worse else []))
        tol = self.spec.ap_tolerance.get(cell.precision, self.spec.ap_tolerance.get("fp32", 0.002))
        if box_types.of_cell(other) != box_types.of_cell(cell):
            self.warnings.append(f"cell {cell.key}: AP on {box_types.of_cell(cell)} boxes, baseline "
                                 f"{other.key} on {box_types.of_cell(other)} boxes: AP not compared")
            return out
        for metric, key in (("AP", "ap"), ("AP50", "ap50")):
            was, now = getattr(other, key), getattr(cell, key)
            if was is None or now is None:
                continue
            state = ("confirmed" if was - now > tol + 1e-9 else
                     "improved" if now - was > tol + 1e-9 else "ok")
            out.append(Finding(cell.key, sid, metric, state, was, now, now - was,
                               first_bad_run=self.run.id if state == "confirmed" else None,
                               baseline_run=base.id, baseline_runs=1,
                               detail=f"tolerance {tol}",
                               provenance_diff=diff if state == "confirmed" else []))
        return out


def _signed(record: dict | None, key: str, sign: float) -> float | None:
    value = (record or {}).get(key)
    return None if value is None else sign * float(value)
