"""AP differences from the stored COCO metrics (overall and per class)."""
from __future__ import annotations


def _delta(cand, ref):
    return None if cand is None or ref is None else float(cand) - float(ref)


def ap_delta(ref_metrics: dict | None, cand_metrics: dict | None,
             ref_classes: list[dict], cand_classes: list[dict]) -> dict:
    """Candidate minus reference: ``ap_delta``, ``ap50_delta`` and per class (by class name)."""
    rm, cm = ref_metrics or {}, cand_metrics or {}
    ref_by = {r["class_name"]: r for r in ref_classes}
    per_class = [{"class_name": c["class_name"], "ap_ref": ref_by[c["class_name"]]["ap"], "ap": c["ap"],
                  "ap_delta": _delta(c["ap"], ref_by[c["class_name"]]["ap"]),
                  "ap50_delta": _delta(c["ap50"], ref_by[c["class_name"]]["ap50"])}
                 for c in cand_classes if c["class_name"] in ref_by]
    return {"ap_ref": rm.get("AP"), "ap": cm.get("AP"), "ap_delta": _delta(cm.get("AP"), rm.get("AP")),
            "ap50_delta": _delta(cm.get("AP50"), rm.get("AP50")), "class_ap_delta": per_class}
