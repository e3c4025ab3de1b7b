"""Flat rows of alignment records for the ``detbench compare`` table (and CSV-like uses)."""
from __future__ import annotations

from harness.evaluate.alignment.attribution import CAUSES

COLUMNS = ("cell", "reference", "matched %", "missing", "extra", *CAUSES, "ΔAP",
           "max abs err (boxes / scores)", "lint")


def _num(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def row(record: dict) -> dict:
    """One record → display strings keyed by :data:`COLUMNS`."""
    if record.get("status") != "ok":
        return {**dict.fromkeys(COLUMNS, ""), "cell": record.get("cell", ""),
                "reference": record.get("reason") or record.get("status", ""),
                "lint": _lint(record)}
    causes = record.get("attribution") or {}
    err = (f"{_num(record.get('tensor_boxes_max_abs_err'), '.2e')} / "
           f"{_num(record.get('tensor_scores_max_abs_err'), '.2e')}")
    return {"cell": record["cell"], "reference": short_key(record["reference"]),
            "matched %": _num(record.get("matched_pct"), ".2f"),
            "missing": str(record.get("missing", "")), "extra": str(record.get("extra", "")),
            **{c: str(causes.get(c, 0)) for c in CAUSES},
            "ΔAP": _num(record.get("ap_delta"), "+.4f"), "max abs err (boxes / scores)": err,
            "lint": _lint(record)}


def short_key(key: str) -> str:
    """``model/pytorch/fp32/b1/s320/cpu/nms-none`` → ``pytorch/fp32/b1``: the reference has the
    candidate's model and imgsz by construction, so the rest only takes room."""
    parts = key.split("/")
    return "/".join(parts[1:4]) if len(parts) >= 4 else key


def _lint(record: dict) -> str:
    items = record.get("lint") or []
    return ", ".join(f"{i['code']}({i['count']})" if "count" in i else i["code"] for i in items)
