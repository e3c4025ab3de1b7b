"""Alignment of every cell of a run with its PyTorch fp32 reference: the file and store IO.

The analysis itself is pure (``harness.evaluate.alignment``); this module finds
each cell's reference and batch twin, loads what the workers left
(detections.json, decoded.npz, decoded_metas.json, per-class AP), runs the
analysis and stores one record per cell (``Store.record_alignment``).  It runs
at the end of ``detbench run`` and on ``detbench compare``; a cell whose
analysis fails gets an ``error`` record instead of stopping the others.
"""
from __future__ import annotations

import json
from pathlib import Path

SCHEMA = 1


class MissingArtifact(Exception):
    """A file the analysis needs is gone (cache cleaned, run from another machine)."""


def compare_candidates(cells) -> list:
    """The finished cells that have something to compare: ok, and not their own reference."""
    from harness.evaluate.alignment.pairing import reference_for

    return [c for c in cells if c.status == "ok"
            and getattr(reference_for(c, cells)[0], "id", None) != c.id]


def compare_run(store, run_id: str) -> list[dict]:
    """Analyse and store every finished non-reference cell; the records in plan order."""
    from harness.evaluate.alignment.pairing import reference_for

    cells = store.cells(run_id)
    loader = _Loader(store)
    records = []
    for cell in cells:
        if cell.status != "ok":
            continue
        ref, reason = reference_for(cell, cells)
        if ref is not None and ref.id == cell.id:
            continue
        record = _record_or_error(loader, cell, ref, reason, cells)
        store.record_alignment(cell.id, record)
        records.append(record)
    return records


def alignments_for(store, run_id: str, *, recompute: bool = False) -> list[dict]:
    """The stored records of a run, computing (and storing) them if any is missing or asked to."""
    cells = store.cells(run_id)
    wanted = compare_candidates(cells)
    stored = store.alignments(run_id)
    if recompute or any(c.id not in stored for c in wanted):
        return compare_run(store, run_id)
    return [stored[c.id] for c in wanted]


def _record_or_error(loader, cell, ref, reason, cells) -> dict:
    try:
        return _record(loader, cell, ref, reason, cells)
    except MissingArtifact as exc:
        return _status_record(cell.key, "no data", str(exc))
    except Exception as exc:  # an analysis bug must not lose the run's other records
        import traceback

        traceback.print_exc()  # loud on stderr, and kept in the record
        return {**_status_record(cell.key, "error", f"{type(exc).__name__}: {exc}"),
                "traceback": traceback.format_exc()}


def _record(loader, cell, ref, reason, cells) -> dict:
    from harness.evaluate.alignment.analysis import analyse
    from harness.evaluate.alignment.pairing import batch_twin

    twin = batch_twin(cell, cells)
    batch = _batch(loader, cell, twin) if twin is not None else None
    if ref is None:
        return {**_status_record(cell.key, "no reference", reason), "batch_invariance": batch}
    if box_type(ref) != box_type(cell):  # a rotated AP is never compared with a horizontal one
        return {**_status_record(cell.key, "no reference",
                                 f"the reference {ref.key} has {box_type(ref)} boxes, this cell "
                                 f"{box_type(cell)} boxes: not comparable"), "batch_invariance": batch}
    match_iou = float(((cell.params or {}).get("alignment") or {}).get("match_iou", 0.5))
    record = analyse(loader.data(ref), loader.data(cell), match_iou, batch)
    layers = int8_layers(cell.provenance or {})
    if layers:
        layers["attribution"] += _mix_on_evaluation(cell, ref, cells, layers)
    return {**record, "int8_layers": layers} if layers else record


def _mix_on_evaluation(cell, ref, cells, layers) -> list[str]:
    """On the evaluation split: the share of the plain int8 cell's ΔAP that the mix removes."""
    mix = layers.get("mixed")
    axes = ("model", "backend", "batch", "imgsz", "device", "nms")
    point = (cell.params or {}).get("calibration_variant")  # a calibration study: the same point
    twin = next((c for c in cells if c.precision == "int8" and c.status == "ok" and c.id != cell.id
                 and all(getattr(c, a) == getattr(cell, a) for a in axes)
                 and (c.params or {}).get("calibration_variant") == point), None)
    if not mix or twin is None or not (ref.metrics and twin.metrics and cell.metrics):
        return []
    full = twin.metrics["AP"] - ref.metrics["AP"]
    mixed = cell.metrics["AP"] - ref.metrics["AP"]
    if full >= 0:
        return []
    from harness.calibration.sensitivity import float_text

    groups = float_text(mix) if mix.get("kept_float_nodes") else "no group"
    return [f"evaluation split: keeping {groups} float removes {(mixed - full) / -full:.0%} of the "
            f"int8 cell's ΔAP ({full:+.4f} -> {mixed:+.4f} vs {ref.key})"]


def int8_layers(provenance: dict) -> dict | None:
    """An int8 cell's layer-group sensitivity table, its mix and the attribution sentences."""
    from harness.calibration.sensitivity import attribution_lines

    from harness.calibration.attribution import lines as evaluation_lines

    table = provenance.get("int8_sensitivity")
    if not table:
        return None
    mix = provenance.get("int8_mixed")
    out = {"sensitivity": table, "attribution": attribution_lines(table)}
    evaluation = provenance.get("int8_attribution")  # the same question on the evaluation images
    if evaluation:
        out["evaluation"] = evaluation
        out["attribution"] = evaluation_lines(evaluation) + out["attribution"]
    if mix:
        out["mixed"] = {k: v for k, v in mix.items() if k != "kept_float_nodes"}
        out["mixed"]["kept_float_convs"] = len(mix.get("kept_float_nodes") or [])
    return out


def _batch(loader, cell, twin) -> dict:
    from harness.evaluate.alignment.batch import batch_invariance

    out = batch_invariance(loader.data(twin).detections, loader.data(cell).detections)
    return {"against": twin.key, "against_batch": twin.batch, "batch": cell.batch, **out}


def _status_record(key: str, status: str, reason: str | None) -> dict:
    from harness.evaluate.alignment import SCHEMA_VERSION

    return {"schema": SCHEMA_VERSION, "status": status, "reason": reason, "cell": key,
            "reference": None}


class _Loader:
    """Each cell's artifacts loaded once per comparison (a reference serves many candidates)."""

    def __init__(self, store):
        self.store = store
        self._data: dict[int, object] = {}

    def data(self, cell):
        if cell.id not in self._data:
            self._data[cell.id] = self._load(cell)
        return self._data[cell.id]

    def _load(self, cell):
        from harness.evaluate.alignment.analysis import CellData
        from harness.evaluate.alignment.replay import Replayer
        from harness.evaluate.alignment.settings import effective_settings

        image_ids, category_ids = _dataset_ids(cell.params["dataset"])
        decoded, metas = _decoded(cell.artifacts or {})
        kind = box_type(cell)
        settings = effective_settings(cell.nms, cell.provenance or {}, rotated=kind == "rotated")
        return CellData(
            key=cell.key, nms=cell.nms, settings=settings,
            detections=_detections(cell.artifacts or {}, image_ids, kind == "rotated"),
            metrics=cell.metrics, class_ap=self.store.class_ap(cell.id), decoded=decoded,
            replayer=Replayer(decoded, metas, category_ids) if decoded is not None else None,
            box_type=kind)


def _read(path: str | None, what: str) -> Path:
    if not path or not Path(path).is_file():
        raise MissingArtifact(f"{what} not found at {path}: rerun the cell or keep its cache dir")
    return Path(path)


def _dataset_ids(dataset: dict) -> tuple[list[int], list[int]]:
    """The evaluated image ids (sorted, limited, as the worker ran them) and the category ids."""
    data = json.loads(_read(dataset.get("annotations"), "annotations").read_text())
    ids = sorted(int(im["id"]) for im in data["images"])
    if dataset.get("limit"):
        ids = ids[:dataset["limit"]]
    return ids, sorted(int(c["id"]) for c in data["categories"])


def _detections(artifacts: dict, image_ids: list[int], rotated: bool = False) -> dict:
    from harness.evaluate.alignment.detsets import from_coco

    entries = json.loads(_read(artifacts.get("detections"), "detections.json").read_text())
    return from_coco(entries, image_ids, rotated=rotated)


def box_type(cell) -> str:
    """``rotated`` or ``horizontal`` (#19): see :func:`harness.models.box_types.of_cell`."""
    from harness.models.box_types import of_cell

    return of_cell(cell)


def _decoded(artifacts: dict):
    """``({image_ids, boxes, scores}, metas)``, or ``(None, None)`` when the cell kept none."""
    import numpy as np

    if not artifacts.get("decoded"):
        return None, None
    with np.load(_read(artifacts["decoded"], "decoded.npz")) as npz:
        decoded = {name: npz[name] for name in ("image_ids", "boxes", "scores")}
    metas = json.loads(_read(artifacts.get("decoded_metas"), "decoded_metas.json").read_text())
    return decoded, metas


# -- presentation --------------------------------------------------------------------------------

def to_json(run_id: str, records: list[dict]) -> str:
    """``detbench compare --json``: ``{"schema", "run_id", "cells": [record, ...]}``, keys sorted."""
    return json.dumps({"schema": SCHEMA, "run_id": run_id, "cells": records}, indent=2,
                      sort_keys=True)


def print_table(run_id: str, records: list[dict]) -> None:
    """The rich table of ``detbench compare``, then each cell's lint messages and notes."""
    import sys

    from rich.console import Console
    from rich.table import Table

    from harness.evaluate.alignment.table import COLUMNS, row

    con = Console(file=sys.stdout, width=220 if not sys.stdout.isatty() else None)
    table = Table(title=f"alignment of run {run_id} with its reference cells (PyTorch fp32; onnx: models: their named reference)")
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for record in records:
        r = row(record)
        table.add_row(*(r[c] for c in COLUMNS))
    con.print(table)
    for record in records:
        lines = [i["message"] for i in record.get("lint") or []] + (record.get("notes") or [])
        for line in rotated_summary(record) + lines:
            con.print(f"{record['cell']}: {line}", markup=False, highlight=False)
    for record in records:
        if record.get("int8_layers"):
            _print_int8_layers(con, record)
    if not records:
        con.print("no finished cell besides the references")


def rotated_summary(record: dict) -> list[str]:
    """A rotated cell's record (#19) in words: matched by rotated IoU, how far angles and centres
    of the matched pairs moved (from its ``angle_delta_hist`` / ``center_shift_hist``)."""
    angles, shifts = record.get("angle_delta_hist"), record.get("center_shift_hist")
    if record.get("box_type") != "rotated" or not angles or not shifts:
        return []
    total = sum(angles["counts"])
    if not total:
        return ["rotated boxes, matched by rotated IoU: no matched pair"]
    edges, counts = angles["edges"], angles["counts"]
    inner = next(i for i, e in enumerate(edges) if e >= 0) - 1  # the bin around 0
    big = sum(c for c, lo, hi in zip(counts, edges, edges[1:]) if lo >= 1.0 or hi <= -1.0)
    still = shifts["counts"][0]
    return [f"rotated boxes, matched by rotated IoU: {total} pairs; angle within "
            f"±{edges[inner + 1]:g}° for {counts[inner]}, ≥ 1° off for {big}; centre moved "
            f"< {shifts['edges'][1]:g} px for {still}"]


def sensitivity_rows(layers: dict) -> list[dict]:
    """The ranked table as display rows (compare and the dashboard share it)."""
    def num(v, spec):
        return "—" if v is None else format(v, spec)

    mixed = layers.get("mixed") or {}
    kept = set(mixed.get("kept_float_groups") or [])
    partial = mixed.get("kept_float_partial_groups") or {}
    rows = []
    for r in layers["sensitivity"]["rows"]:
        rows.append({"rank": str(r.get("rank", "—")), "group": r["group"], "convs": str(r["convs"]),
                     "conv FLOPs": f"{r['flops_fraction']:.1%}",
                     "ΔAP only this int8": num(r.get("only_delta_ap"), "+.4f"),
                     "ΔAP this left float": num(r.get("leave_out_delta_ap"), "+.4f"),
                     "± SE (left float)": num(r.get("leave_out_se"), ".4f"),
                     "ΔAP recovered": num(r.get("recovered_fraction"), ".0%"),
                     "SQNR dB (int8)": num(r.get("conv_sqnr_db"), ".1f"),
                     "out SQNR dB (only)": num(r.get("only_output_sqnr_db"), ".1f"),
                     "mix": "float" if r["group"] in kept else (
                         f"{partial[r['group']]} of {r['convs']} float" if r["group"] in partial else
                         ("—" if not r["convs"] else "int8"))})
    return rows


def mix_summary(layers: dict) -> str:
    from harness.calibration.sensitivity import float_text
    from harness.evaluate.ap_bootstrap import interval

    t, mix = layers["sensitivity"], layers.get("mixed")
    level = (t.get("bootstrap") or {}).get("level", 0.95)
    head = (f"sensitivity split: {t['split']} ({t['images']} images, {t['method']}); fp32 AP {t['fp32_ap']:.4f}, "
            f"int8 AP {t['int8_ap']:.4f} (ΔAP {t['int8_delta_ap']:+.4f}"
            f"{interval(t.get('int8_delta_ap_se'), t.get('int8_delta_ap_ci'), level)})")
    if t.get("bootstrap"):
        head += f"; paired bootstrap over images, {t['bootstrap']['samples']} resamples, seed {t['bootstrap']['seed']}"
    if not mix:
        return head
    state = "met" if mix["met"] else "NOT met (best mix found kept)"
    rule = f" ({mix['criterion']})" if mix.get("criterion") else ""
    return (f"{head}; mix: budget {mix['ap_budget']} {state}{rule}, float: "
            f"{float_text(mix)} ({mix['kept_float_convs']} convs), "
            f"{mix['int8_conv_flops_fraction']:.1%} of conv FLOPs int8, ΔAP {mix['sensitivity_delta_ap']:+.4f}"
            f"{interval(mix.get('sensitivity_delta_ap_se'), mix.get('sensitivity_delta_ap_ci'), level)}")


def _print_int8_layers(con, record: dict) -> None:
    from rich.table import Table

    layers = record["int8_layers"]
    rows = sensitivity_rows(layers)
    table = Table(title=f"{record['cell']}: int8 sensitivity per layer group (ranked)")
    for col in rows[0]:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*r.values())
    con.print(table)
    con.print(mix_summary(layers), markup=False, highlight=False)
    for line in layers.get("attribution") or []:
        con.print(f"{record['cell']}: {line}", markup=False, highlight=False)
