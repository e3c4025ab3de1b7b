"""Ultralytics YOLO models, exported to ONNX by Ultralytics' own exporter inside the cell.

The matrix's ``ultralytics:`` block names a ``.pt`` file (a user's trained
model) or a model YAML (an Ultralytics config name such as ``yolov8n.yaml``,
or a path: random weights, used in tests); nothing is downloaded (a ``.pt``
must be an existing file, and the exporter runs with ``YOLO_OFFLINE=1`` and
``YOLO_AUTOINSTALL=false``).  The export runs in a subprocess of ``python``
(default: the worker's own interpreter), because Ultralytics needs
torchvision, which does not import beside every torch build detbench runs on:
pointing ``python`` at a separate environment keeps it out of the core.  The
exported graph (Ultralytics' raw ``output0`` [N, 4+C, A], letterboxed RGB /255
input, class names in its metadata) then runs through the ``onnx:`` path; the
exporter's version is recorded in provenance and in the cache key.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field

from harness.errors import UserError
from harness.models.onnx_source import ReferenceRule, _Strict

_EXPORT = r"""
import json, sys
from pathlib import Path
import ultralytics
from ultralytics import YOLO
src, imgsz, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
model = YOLO(src)
made = model.export(format="onnx", imgsz=imgsz, dynamic=True, opset=17, simplify=False, half=False)
Path(made).replace(out)
print("DETBENCH_EXPORT " + json.dumps({"ultralytics": ultralytics.__version__,
                                        "names": {int(k): str(v) for k, v in model.names.items()}}))
"""


class UltralyticsSource(_Strict):
    """The matrix's ``ultralytics:`` block of a model."""

    model: str = Field(description="a .pt file, or a model YAML (random weights)")
    python: Optional[str] = Field(default=None, description="interpreter with ultralytics installed")
    classes: Optional[Union[Literal["coco80"], list[str]]] = None
    class_map: dict[str, Union[str, int]] = Field(default_factory=dict)
    reference: ReferenceRule = Field(default_factory=ReferenceRule)


def interpreter(spec: dict) -> str:
    return spec.get("python") or os.environ.get("DETBENCH_ULTRALYTICS_PYTHON") or sys.executable


def exporter_version(python: str) -> str | None:
    """Ultralytics' version in ``python`` (no import of torch), or None when it is not installed."""
    try:
        out = subprocess.run([python, "-c", "from importlib.metadata import version; "
                                            "print(version('ultralytics'))"],
                             capture_output=True, text=True, timeout=120)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def check_model(spec, where: str) -> None:
    """Plan time: a .pt must exist (it would otherwise be downloaded)."""
    model = spec.model
    if model.endswith(".pt") and not Path(model).is_file():
        raise UserError(f"{where}.model: '{model}' does not exist; give a .pt file (nothing is downloaded) "
                        "or a model YAML")
    if not model.endswith((".pt", ".yaml", ".yml")):
        raise UserError(f"{where}.model: '{model}' is neither a .pt file nor a model YAML")


def export(spec: dict, imgsz: int, cache_dir: Path) -> tuple[Path, dict]:
    """The cached ONNX export of ``spec['model']`` at ``imgsz`` and its facts (exporter version...).

    Raises :class:`~harness.backends.base.SkipCell` when ``python`` has no Ultralytics.
    """
    from harness.backends.base import SkipCell

    python = interpreter(spec)
    version = exporter_version(python)
    if version is None:
        raise SkipCell(f"ultralytics is not installed for {python} (an optional extra that needs "
                       "torchvision: install it in its own environment and set `ultralytics.python` or "
                       "DETBENCH_ULTRALYTICS_PYTHON)")
    src = Path(spec["model"])
    content = hashlib.sha256(src.read_bytes()).hexdigest() if src.is_file() else f"packaged:{spec['model']}"
    key = hashlib.sha256(json.dumps([content, imgsz, version, _EXPORT]).encode()).hexdigest()[:20]
    out = Path(cache_dir) / "ultralytics" / f"{key}.onnx"
    facts_path = out.with_suffix(".json")
    if not (out.is_file() and facts_path.is_file()):
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            arg = str(src)
            if src.is_file():  # Ultralytics writes the ONNX beside its input: work on a copy
                arg = str(Path(tmp) / src.name)
                shutil.copy(src, arg)
            env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false",
                   "YOLO_CONFIG_DIR": tmp}
            staged = Path(tmp) / "export.onnx"
            proc = subprocess.run([python, "-c", _EXPORT, arg, str(imgsz), str(staged)], cwd=tmp, env=env,
                                  capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0 or not staged.is_file():
                print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", flush=True)  # the log tail
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise UserError(f"ultralytics {version} could not export '{spec['model']}': {last[:300]}")
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("DETBENCH_EXPORT "))
            facts = {**json.loads(line.split(" ", 1)[1]), "python": python, "model": spec["model"],
                     "model_sha256": content}
            facts_path.write_text(json.dumps(facts))
            os.replace(staged, out)
    facts = json.loads(facts_path.read_text())
    return out, {"exporter": f"ultralytics {facts['ultralytics']}", "ultralytics": facts}


def onnx_block(spec: dict, path: Path, names: dict) -> dict:
    """The ``onnx:`` contract of an Ultralytics export: its raw v8 output, letterbox, RGB / 255."""
    classes = spec.get("classes")
    if classes is None and names:
        classes = [names[k] for k in sorted(names, key=int)]
    return {"path": str(path), "input": {"resize": "letterbox", "pad_value": 114, "color": "RGB",
                                         "layout": "NCHW", "scale": 1 / 255},
            "output": {"convention": "yolo_raw", "raw_layout": "v8", "box_format": "cxcywh"},
            "classes": classes, "class_map": spec.get("class_map") or {},
            "reference": spec.get("reference") or {}}
