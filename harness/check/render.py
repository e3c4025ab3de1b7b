"""A check report as text, Markdown (CI step summary / PR comment), JSON or JUnit XML."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

from harness.check.findings import Finding, Report

_SHOWN = ("confirmed", "suspect", "improved", "new", "failing", "insufficient data")
_ICON = {"confirmed": "❌", "suspect": "⚠️", "improved": "✅", "new": "🆕", "failing": "💥",
         "insufficient data": "…", "ok": "✓"}


def _num(value, metric: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3f} ms" if "latency" in metric else f"{value:.4g}"


def _change(f: Finding) -> str:
    if f.change is None:
        return "–"
    if "latency" in f.metric:
        return f"{f.change:+.1%}"
    return f"{f.change:+.4f}"


def _p(f: Finding) -> str:
    p = f.pvalue if f.pvalue is not None else (f.two_run or {}).get("pvalue")
    if p is None:
        return "–"
    return "<1e-16" if p < 1e-16 else f"{p:.2g}"


def _diff_text(f: Finding, limit: int = 6) -> str:
    parts = [f"{d['field']}: {d['before']} → {d['after']}" for d in f.provenance_diff[:limit]]
    more = len(f.provenance_diff) - limit
    return "; ".join(parts) + (f"; +{more} more" if more > 0 else "") if parts else ""


def _values(f: Finding) -> str:
    """before -> after (change, p); a status finding says what happened instead."""
    if f.metric == "status":
        return f.detail
    return (f"{_num(f.before, f.metric)} -> {_num(f.after, f.metric)} ({_change(f)}, p {_p(f)})")


def summary_line(report: Report) -> str:
    counts = report.to_dict()["counts"]
    shown = ", ".join(f"{counts[s]} {s}" for s in (*_SHOWN, "ok") if counts.get(s))
    against = f"baseline {report.baseline}" if report.baseline else "its history"
    return f"run {report.run['id']} ({report.run['name']}) against {against}: {shown or 'no cells'}"


def to_text(report: Report) -> str:
    lines = [summary_line(report)]
    for f in report.findings:
        if f.state == "ok":
            continue
        line = f"  {f.state:17s} {f.cell}  {f.metric}: {_values(f)}"
        if f.first_bad_run:
            line += f"  first bad run {f.first_bad_run}"
        if f.detail and f.state in ("failing", "insufficient data"):
            line += f"  [{f.detail}]"
        lines.append(line)
        if f.provenance_diff:
            lines.append(f"      changed: {_diff_text(f)}")
    lines += [f"warning: {w}" for w in report.warnings]
    if report.no_series:
        lines.append(f"{len(report.no_series)} cell(s) have no series in the baseline run: "
                     + ", ".join(report.no_series))
    return "\n".join(lines) + "\n"


def to_markdown(report: Report) -> str:
    verdict = ("❌ confirmed regression" if report.exit_code else "✅ no confirmed regression")
    lines = [f"## detbench check: {verdict}", "", summary_line(report) + ".", ""]
    rows = [f for f in report.findings if f.state != "ok"]
    if rows:
        lines += ["| | cell | metric | before → after | change | p | first bad run | what changed |",
                  "|---|---|---|---|---|---|---|---|"]
        for f in rows:
            changed = _diff_text(f) or (f.detail if f.state in ("insufficient data", "failing")
                                        and f.metric != "status" else "")
            values = (f.detail if f.metric == "status" else
                      f"{_num(f.before, f.metric)} → {_num(f.after, f.metric)}")
            lines.append(f"| {_ICON.get(f.state, '')} {f.state} | `{f.cell}` | {f.metric} | "
                         f"{values.replace('|', '/')} | {_change(f)} | {_p(f)} | "
                         f"{f.first_bad_run or '–'} | {changed.replace('|', '/')} |")
    else:
        lines.append("Every checked metric is within its series' noise.")
    if report.no_series:
        lines += ["", f"**No series in baseline {report.baseline}:** "
                  + ", ".join(f"`{k}`" for k in report.no_series)]
    if report.warnings:
        lines += ["", "**Warnings:**", *[f"- {w}" for w in report.warnings]]
    s = report.settings
    lines += ["", f"<sub>latency: min magnitude {s['min_magnitude']:.0%}, z {s['z']}, confirmed "
              f"after {s['confirm_nights']} consecutive bad runs, history {s['history']} runs; "
              f"AP tolerance {s['ap_tolerance']}</sub>", ""]
    return "\n".join(lines)


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str) + "\n"


def to_junit(report: Report) -> str:
    """One test case per cell x metric: confirmed -> failure, suspect / insufficient data /
    new -> passed with the state in system-out (a CI gate fails on confirmed only)."""
    suite = ET.Element("testsuite", name=f"detbench check {report.run['id']}",
                       tests=str(len(report.findings)),
                       failures=str(sum(f.state == "confirmed" for f in report.findings)),
                       errors="0", skipped="0")
    for f in report.findings:
        case = ET.SubElement(suite, "testcase", classname=f.cell, name=f.metric)
        message = f"{f.metric} {f.state}: {_values(f)}"
        if f.state == "confirmed":
            failure = ET.SubElement(case, "failure", message=message, type="regression")
            failure.text = "\n".join(filter(None, [f"first bad run: {f.first_bad_run}",
                                                   f.detail, _diff_text(f, 50)]))
        out = ET.SubElement(case, "system-out")
        out.text = message + (f" [{f.detail}]" if f.detail and f.metric != "status" else "")
    root = ET.Element("testsuites", name="detbench check")
    root.append(suite)
    for name in ("tests", "failures", "errors"):
        root.set(name, suite.get(name))
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


FORMATS = {"text": to_text, "md": to_markdown, "json": to_json, "junit": to_junit}
