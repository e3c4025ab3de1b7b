"""The matrix: a YAML schema (pydantic v2) and its pure expansion into cells.

Expansion is a Cartesian product of the axes, then ``exclude`` rules remove
cells and ``include`` rules add cells back (asv's semantics); ``overrides``
patch settings of matching cells.  It reads no files and imports nothing
heavy, so ``detbench plan`` is instant and unit-testable.
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.backends import BACKENDS
from harness.errors import UserError
from harness.models.table import MODELS

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-mixed")
DEVICES = ("cpu", "cuda")
NMS_VARIANTS = ("none", "onnx", "efficient_nms", "batched_nms")
AXES = ("model", "backend", "precision", "batch", "imgsz", "device", "nms")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """A model: a table name and/or an mmyolo config path, and its weights."""

    name: str
    config: Optional[str] = None
    checkpoint: str = Field(description="path to a .pth file, or 'random' for seeded init weights")
    trust_checkpoint: bool = False

    @model_validator(mode="after")
    def _known_or_config(self):
        if self.config is None and self.name not in MODELS:
            raise ValueError(_unknown("model", self.name, MODELS, extra=" (or give `config:`)"))
        return self


class DatasetSpec(_Strict):
    """A COCO-layout dataset, or a synthetic one generated deterministically."""

    images: Optional[str] = None
    annotations: Optional[str] = None
    synth: Optional["SynthSpec"] = None
    limit: Optional[int] = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_source(self):
        if self.synth is None and (self.images is None or self.annotations is None):
            raise ValueError("give `images` and `annotations` (COCO layout) or `synth`")
        if self.synth is not None and (self.images or self.annotations):
            raise ValueError("give either `synth` or `images` + `annotations`, not both")
        return self


class SynthSpec(_Strict):
    images: int = Field(default=32, gt=0)
    seed: int = 2
    size: int = Field(default=320, ge=32)


class EvalSpec(_Strict):
    """NMS and scoring settings; ``None`` means the model config's own test_cfg."""

    score_thr: Optional[float] = Field(default=None, ge=0, le=1)
    iou_thr: Optional[float] = Field(default=None, gt=0, le=1)
    pre_topk: Optional[int] = Field(default=None, gt=0)
    keep_topk: Optional[int] = Field(default=None, gt=0)
    pre_topk_policy: Literal["clamp", "refuse"] = Field(
        default="clamp", description="when pre_topk exceeds a backend's TopK limit (TensorRT: 3840)")


class TimingSpec(_Strict):
    warmup: int = Field(default=10, ge=0)
    iterations: int = Field(default=50, gt=0)
    min_duration_s: float = Field(default=0.0, ge=0)
    cv_warn: float = Field(default=0.10, gt=0)
    e2e: bool = True
    cuda_graph: bool = False


class CalibrationSpec(_Strict):
    images: int = Field(default=32, gt=0)
    method: Literal["minmax", "entropy", "percentile", "mse"] = "minmax"
    percentile: float = Field(default=99.99, gt=0, le=100)
    seed: int = 3
    source: Optional[DatasetSpec] = None
    # AP-aware int8 (precision int8-mixed, or int8 with ap_budget set): a sensitivity split that
    # is neither the calibration nor the evaluation split; the budget is an AP drop vs fp32
    ap_budget: Optional[float] = Field(default=None, ge=0, le=1)
    min_int8_flops: float = Field(default=0.5, ge=0, le=1,
                                  description="a mix keeps at least this share of conv FLOPs int8")
    sensitivity: bool = Field(default=False, description="also rank layer groups for plain int8 cells")
    sensitivity_images: int = Field(default=64, ge=0)
    sensitivity_seed: int = 5
    sensitivity_source: Optional[DatasetSpec] = None

    @model_validator(mode="after")
    def _sensitivity_split(self):
        from harness.calibration.sensitivity import MIN_SPLIT_IMAGES

        if self.sensitivity_images < MIN_SPLIT_IMAGES:
            raise ValueError(f"sensitivity_images is {self.sensitivity_images}: the sensitivity "
                             f"split needs at least {MIN_SPLIT_IMAGES} images; raise it (64 is a good start)")
        if self.sensitivity_source is None and self.sensitivity_seed == self.seed:
            raise ValueError(f"sensitivity_seed {self.sensitivity_seed} equals calibration.seed: "
                             "the sensitivity split must not be the calibration split; pick another seed")
        return self


class AlignmentSpec(_Strict):
    """How much evidence each cell keeps for the alignment analysis against the reference."""

    images: int = Field(default=32, ge=0, description="images whose decoded pre-NMS tensors are kept")
    match_iou: float = Field(default=0.5, gt=0, le=1)


class Rule(_Strict):
    """A partial cell: any subset of the axes."""

    model: Optional[str] = None
    backend: Optional[str] = None
    precision: Optional[str] = None
    batch: Optional[int] = None
    imgsz: Optional[int] = None
    device: Optional[str] = None
    nms: Optional[str] = None

    def matches(self, cell: dict) -> bool:
        return all(v is None or cell[k] == v for k, v in self.model_dump().items())


class Override(_Strict):
    match: Rule
    set: dict[str, Any]

    @field_validator("set")
    @classmethod
    def _settable(cls, v):
        known = ["eval", "timing", "calibration", "alignment", "timeout_s"]
        bad = sorted(set(v) - set(known))
        if bad:
            raise ValueError(_unknown("override key", bad[0], known))
        return v


class Matrix(_Strict):
    name: str = "matrix"
    models: list[ModelSpec] = Field(min_length=1)
    backends: list[str] = Field(min_length=1)
    precisions: list[str] = Field(default_factory=lambda: ["fp32"], min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1)
    image_sizes: list[int] = Field(default_factory=lambda: [640], min_length=1)
    devices: list[str] = Field(default_factory=lambda: ["cpu"], min_length=1)
    nms: list[str] = Field(default_factory=lambda: ["none"], min_length=1)
    exclude: list[Rule] = Field(default_factory=list)
    include: list[Rule] = Field(default_factory=list)
    overrides: list[Override] = Field(default_factory=list)
    dataset: DatasetSpec
    eval: EvalSpec = Field(default_factory=EvalSpec)
    timing: TimingSpec = Field(default_factory=TimingSpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    alignment: AlignmentSpec = Field(default_factory=AlignmentSpec)
    timeout_s: float = Field(default=900, gt=0)

    @field_validator("backends")
    @classmethod
    def _backends(cls, v):
        return _check_names("backend", v, BACKENDS)

    @field_validator("precisions")
    @classmethod
    def _precisions(cls, v):
        return _check_names("precision", v, PRECISIONS)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v):
        return _check_names("device", [d.split(":")[0] for d in v], DEVICES) and v

    @field_validator("nms")
    @classmethod
    def _nms(cls, v):
        return _check_names("nms variant", v, NMS_VARIANTS)

    @field_validator("batch_sizes", "image_sizes")
    @classmethod
    def _positive(cls, v):
        for i, x in enumerate(v):
            if x <= 0:
                raise ValueError(f"[{i}] must be a positive integer, got {x}")
        return v

    @field_validator("image_sizes")
    @classmethod
    def _stride(cls, v):
        for i, x in enumerate(v):
            if x % 32:
                raise ValueError(f"[{i}] {x} is not a multiple of 32 (the detectors' max stride); "
                                 f"try {max(32, round(x / 32) * 32)}")
        return v


def _unknown(what: str, value: Any, known, extra: str = "") -> str:
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=1)
    hint = f" — did you mean '{close[0]}'?" if close else f" — known: {', '.join(map(str, known))}"
    return f"unknown {what} '{value}'{extra}{hint}"


def _check_names(what: str, values: list[str], known) -> list[str]:
    for i, value in enumerate(values):
        if value not in known:
            raise ValueError(f"[{i}] {_unknown(what, value, known)}")
    return values


# ---------------------------------------------------------------- loading


def load(path: str | Path) -> tuple[Matrix, str]:
    """Parse and validate a matrix file; returns the matrix and its raw text."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"matrix file '{path}' does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a matrix is a YAML mapping with `models`, `backends`, `dataset`...")
    return resolve_paths(parse(data, source=str(path)), path.parent), text


def resolve_paths(m: Matrix, base: Path) -> Matrix:
    """Relative paths in a matrix are relative to the matrix file, not the working directory."""

    def fix(p: str | None) -> str | None:
        if p is None or p == "random" or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    for spec in m.models:
        spec.config, spec.checkpoint = fix(spec.config), fix(spec.checkpoint)
    for ds in (m.dataset, m.calibration.source, m.calibration.sensitivity_source):
        if ds is not None:
            ds.images, ds.annotations = fix(ds.images), fix(ds.annotations)
    return m


def check_files(m: Matrix, source: str) -> None:
    """Fail before any cell runs when a model's config or checkpoint file is missing."""
    for i, spec in enumerate(m.models):
        if spec.config is not None and not Path(spec.config).is_file():
            raise UserError(f"{source}: models[{i}].config: config '{spec.config}' does not exist")
        if spec.checkpoint != "random" and not Path(spec.checkpoint).is_file():
            raise UserError(f"{source}: models[{i}].checkpoint: checkpoint '{spec.checkpoint}' does "
                            "not exist: give a .pth path (relative to the matrix file) or `random`")
        if spec.checkpoint != "random":
            from harness.models.checkpoint import sniff

            problem = sniff(spec.checkpoint)
            if problem:
                raise UserError(f"{source}: models[{i}].checkpoint: '{spec.checkpoint}': {problem}")


def parse(data: dict, source: str = "<matrix>") -> Matrix:
    try:
        return Matrix.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {_first_error(exc, data)}") from None


def _first_error(exc: ValidationError, data: dict) -> str:
    err = exc.errors()[0]
    loc = _loc(err["loc"])
    if err["type"] == "extra_forbidden":
        parent = _parent_model(err["loc"])
        key = err["loc"][-1]
        return f"{loc}: {_unknown('key', key, list(parent.model_fields) if parent else [])}"
    if err["type"] == "missing":
        return f"{loc}: required key missing"
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith("["):  # our list validators prefix the index
        idx, rest = msg.split("] ", 1)
        return f"{loc}{idx}]: {rest}"
    return f"{loc}: {msg}" if loc else msg


def _loc(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _parent_model(loc) -> type[BaseModel] | None:
    model: Any = Matrix
    for p in loc[:-1]:
        if isinstance(p, int):
            continue
        field = model.model_fields.get(p)
        if field is None:
            return None
        model = _model_of(field.annotation)
        if model is None:
            return None
    return model


def _model_of(ann) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _model_of(arg)
        if found:
            return found
    return None


# ---------------------------------------------------------------- expansion


def expand(m: Matrix) -> list[dict]:
    """Every cell of the matrix, in a stable order, with its settings and static skip reason."""
    models = {spec.name: spec for spec in m.models}
    product = itertools.product(models, m.backends, m.precisions, m.batch_sizes, m.image_sizes,
                                m.devices, m.nms)
    axes = [dict(zip(AXES, combo)) for combo in product]
    axes = [c for c in axes if not any(r.matches(c) for r in m.exclude)]
    for rule in m.include:
        cell = _complete(rule, m, models)
        if cell not in axes:
            axes.append(cell)
    return [_settle(c, m, models[c["model"]]) for c in axes]


def _complete(rule: Rule, m: Matrix, models: dict) -> dict:
    cell = {k: v for k, v in rule.model_dump().items() if v is not None}
    missing = [k for k in AXES if k not in cell and k != "nms"]
    if missing:
        raise UserError(f"include rule {cell}: an included cell names every axis; missing "
                        f"{', '.join(missing)}")
    if cell["model"] not in models:
        raise UserError(f"include rule {cell}: {_unknown('model', cell['model'], list(models))}")
    cell.setdefault("nms", "none")
    return {k: cell[k] for k in AXES}


def _settle(axes: dict, m: Matrix, spec: ModelSpec) -> dict:
    settings = {"eval": m.eval.model_dump(), "timing": m.timing.model_dump(),
                "calibration": m.calibration.model_dump(), "alignment": m.alignment.model_dump(),
                "timeout_s": m.timeout_s}
    for ov in m.overrides:
        if ov.match.matches(axes):
            for key, value in ov.set.items():
                settings[key] = ({**settings[key], **value} if isinstance(value, dict) else value)
    cell = {**axes, "key": cell_key(axes), "model_spec": spec.model_dump(), **settings,
            "batch_axis": sorted(m.batch_sizes)}
    cell["skip_reason"] = BACKENDS[axes["backend"]].static_skip_reason(axes)
    return cell


def cell_key(axes: dict) -> str:
    """A readable, unique name of a cell within its run."""
    return "{model}/{backend}/{precision}/b{batch}/s{imgsz}/{device}/nms-{nms}".format(**axes)


def matrix_hash(m: Matrix) -> str:
    return hashlib.sha256(json.dumps(m.model_dump(), sort_keys=True).encode()).hexdigest()


DatasetSpec.model_rebuild()
