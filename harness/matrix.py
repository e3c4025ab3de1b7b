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
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError,
                      field_validator, model_serializer, model_validator)

from harness.backends import BACKENDS
from harness.errors import UserError
from harness.models.mmyolo_build import check_config
from harness.models.onnx_source import OnnxSource
from harness.models.table import KNOWN_MODELS, packaged_config, resolve_config
from harness.models.ultralytics_source import UltralyticsSource

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-mixed")
DEVICES = ("cpu", "cuda")
NMS_VARIANTS = ("none", "onnx", "efficient_nms", "batched_nms")
AXES = ("model", "backend", "precision", "batch", "imgsz", "device", "nms")
#: the input tensor of one cell (batch x 3 x imgsz^2 float32) may not exceed this unless the
#: matrix raises `max_input_gib`: a typo such as `batch_sizes: [1000000000]` is refused at plan time
MAX_INPUT_GIB = 2.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """A model: a table name and/or an mmyolo config path and its weights, or an ONNX file (``onnx:``)."""

    name: str
    config: Optional[str] = None
    checkpoint: Optional[str] = Field(description="path to a .pth file, or 'random' for seeded init "
                                                  "weights (none for `onnx:` / `ultralytics:` models)")
    trust_checkpoint: bool = False
    onnx: Optional[OnnxSource] = Field(default=None, description="a user's ONNX model and its contract")
    ultralytics: Optional[UltralyticsSource] = Field(
        default=None, description="an Ultralytics model, exported by Ultralytics inside the cell")

    @model_validator(mode="before")
    @classmethod
    def _graph_models(cls, data):
        """An ``onnx:`` / ``ultralytics:`` model is its graph: no config, no checkpoint."""
        if isinstance(data, dict) and (data.get("onnx") is not None or data.get("ultralytics") is not None):
            if data.get("onnx") is not None and data.get("ultralytics") is not None:
                raise ValueError("give either `onnx:` or `ultralytics:`, not both")
            if "config" in data or "checkpoint" in data:
                kind = "onnx" if data.get("onnx") is not None else "ultralytics"
                raise ValueError(f"an `{kind}:` model takes no `config`/`checkpoint` (the graph is the model)")
            data = {**data, "checkpoint": None}
        return data

    @model_validator(mode="after")
    def _known_or_config(self):
        if self.onnx is not None or self.ultralytics is not None:
            return self
        if self.checkpoint is None:
            raise ValueError("`checkpoint` must be a .pth path or `random`")
        if self.config is None and self.name not in KNOWN_MODELS:
            raise ValueError(_unknown("model", self.name, KNOWN_MODELS, extra=" (or give `config:`)"))
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
    rotated: bool = Field(default=False, description="rotated shapes with rotated ground truth "
                                                     "(harness.data.synth_rotated, #19)")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """``rotated`` only when set: horizontal sets dump (and hash, and form series) as before #19."""
        data = handler(self)
        if not self.rotated and isinstance(data, dict):
            data.pop("rotated", None)
        return data


class EvalSpec(_Strict):
    """NMS and scoring settings; ``None`` means the model config's own test_cfg."""

    score_thr: Optional[float] = Field(default=None, ge=0, le=1)
    iou_thr: Optional[float] = Field(default=None, gt=0, le=1)
    pre_topk: Optional[int] = Field(default=None, gt=0)
    keep_topk: Optional[int] = Field(default=None, gt=0)
    pre_topk_policy: Literal["clamp", "refuse"] = Field(
        default="clamp", description="when pre_topk exceeds a backend's TopK limit (TensorRT: 3840)")
    evaluator: Literal["pycocotools", "faster-coco-eval"] = Field(
        default="pycocotools", description="COCO evaluator; pycocotools is the reference")


class TimingSpec(_Strict):
    warmup: int = Field(default=10, ge=0)
    iterations: int = Field(default=50, gt=0)
    min_duration_s: float = Field(default=0.0, ge=0)
    cv_warn: float = Field(default=0.10, gt=0)
    e2e: bool = True
    cuda_graph: bool = False


CalibrationMethod = Literal["minmax", "entropy", "percentile", "mse"]
_SWEPT = {"images": TypeAdapter(Annotated[int, Field(gt=0)]), "method": TypeAdapter(CalibrationMethod)}


def _one_swept(adapter: TypeAdapter, value: Any, where: str) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise ValueError(f"{where}{_message(exc.errors()[0])}") from None


class CalibrationSpec(_Strict):
    """int8 calibration; ``method`` and ``images`` may be lists: a *calibration study*, whose
    int8 / int8-mixed cells are expanded over method × images (:func:`expand`)."""

    images: int | list[int] = Field(default=32, description="calibration images, or a list of sizes to sweep")
    method: CalibrationMethod | list[CalibrationMethod] = Field(
        default="minmax", description="calibration method, or a list of methods to sweep")
    percentile: float = Field(default=99.99, gt=0, le=100)
    seed: int = 3
    source: Optional[DatasetSpec] = None
    smoothing: Optional[float] = Field(
        default=None, ge=0, le=1,
        description="SmoothQuant-style migration strength α before int8 Q/DQ: each quantized Conv's input "
                    "is divided per channel by s = max|x|^α / max|W|^(1−α) and its weight multiplied by s "
                    "(exact in float; TensorRT-compatible). Off when unset")
    # AP-aware int8 (precision int8-mixed, or int8 with ap_budget set): a sensitivity split that
    # is neither the calibration nor the evaluation split; the budget is an AP drop vs fp32
    ap_budget: Optional[float] = Field(default=None, ge=0, le=1)
    min_int8_flops: float = Field(default=0.5, ge=0, le=1,
                                  description="a mix keeps at least this share of conv FLOPs int8")
    ap_margin_se: float = Field(
        default=1.0, ge=0, description="a mix meets the budget when ΔAP − this × SE ≥ −ap_budget (SE: the "
                                       "paired bootstrap's over the sensitivity split's images; 0: ΔAP alone)")
    bootstrap_samples: int = Field(
        default=500, ge=0, description="paired bootstrap resamples of ΔAP over images (0: off, no SE/CI)")
    bootstrap_seed: int = 0
    sensitivity: bool = Field(default=False, description="also rank layer groups for plain int8 cells")
    sensitivity_images: int = Field(default=64, ge=0)
    sensitivity_seed: int = 5
    sensitivity_source: Optional[DatasetSpec] = None
    float_groups: Optional[list[str]] = Field(
        default=None, description="int8-mixed: keep exactly these layer groups float (e.g. the mix an "
                                  "earlier run's search found): no sensitivity split, no search")
    float_convs: Optional[list[str]] = Field(
        default=None, description="int8-mixed: keep exactly these Conv nodes float (with float_groups: "
                                  "both), e.g. a conv-level mix an earlier run's search found "
                                  "(its int8_mixed.kept_float_nodes)")
    attribution_images: int = Field(
        default=100, ge=0, description="with a sensitivity table: the first N evaluation images on "
                                       "which each layer group's share of the int8 ΔAP is measured (0: off)")

    @field_validator("images", "method", mode="before")
    @classmethod
    def _sweep(cls, v, info):
        """One value, or a non-empty list of distinct values; each checked as a single one (one
        error line naming the bad entry, without pydantic's union branches)."""
        one = _SWEPT[info.field_name]
        if not isinstance(v, list):
            return _one_swept(one, v, "")
        if not v:
            raise ValueError("an empty list sweeps nothing: give one value or a list of several")
        values = [_one_swept(one, x, f"[{i}] ") for i, x in enumerate(v)]
        twice = [x for i, x in enumerate(values) if x in values[:i]]
        if twice:
            raise ValueError(f"{twice[0]!r} is listed twice: give each swept value once")
        return values

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


class CheckSpec(_Strict):
    """How ``detbench check`` judges a run against its history (see ``harness.check``)."""

    min_magnitude: float = Field(default=0.05, gt=0, lt=1,
                                 description="smallest latency change (relative) worth a regression")
    history: int = Field(default=30, ge=2, description="earlier runs of a series to look at")
    min_history: int = Field(default=5, ge=1, description="earlier runs needed for a verdict")
    confirm_nights: int = Field(default=2, ge=1, description="consecutive bad runs that confirm")
    z: float = Field(default=3.0, gt=0, description="one-sided significance, in standard errors")
    ap_tolerance: dict[str, float] = Field(
        default_factory=lambda: {"fp32": 0.002, "fp16": 0.002, "bf16": 0.002, "int8": 0.005},
        description="largest accepted AP/AP50 drop per precision")
    matched_pct_tolerance: float = Field(default=1.0, ge=0,
                                         description="largest accepted drop of alignment matched %")

    @field_validator("ap_tolerance")
    @classmethod
    def _tolerances(cls, v):
        for name, tol in v.items():
            if tol < 0:
                raise ValueError(f"ap_tolerance.{name} must be >= 0, got {tol}")
        return v


class Rule(_Strict):
    """A partial cell: any subset of the axes; a misspelt value is an error, never a silent no-match."""

    model: Optional[str] = None
    backend: Optional[str] = None
    precision: Optional[str] = None
    batch: Optional[StrictInt] = Field(default=None, gt=0)
    imgsz: Optional[StrictInt] = Field(default=None, gt=0)
    device: Optional[str] = None
    nms: Optional[str] = None

    @field_validator("backend")
    @classmethod
    def _backend(cls, v):
        return _check_name("backend", v, BACKENDS)

    @field_validator("precision")
    @classmethod
    def _precision(cls, v):
        return _check_name("precision", v, PRECISIONS)

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        return v if v is None else _check_name("device", v.split(":")[0], DEVICES) and v

    @field_validator("nms")
    @classmethod
    def _nms(cls, v):
        return _check_name("nms variant", v, NMS_VARIANTS)

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
    batch_sizes: list[StrictInt] = Field(default_factory=lambda: [1], min_length=1)
    image_sizes: list[StrictInt] = Field(default_factory=lambda: [640], min_length=1)
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
    max_input_gib: float = Field(default=MAX_INPUT_GIB, gt=0,
                                 description="largest input tensor (batch x 3 x imgsz^2 x 4 bytes) a cell may use")
    check: CheckSpec = Field(default_factory=CheckSpec)

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

    @model_validator(mode="after")
    def _input_sizes(self):
        for i, batch in enumerate(self.batch_sizes):
            _check_input_size(f"batch_sizes[{i}]", batch, max(self.image_sizes), self.max_input_gib)
        for i, rule in enumerate(self.include):
            if rule.batch is not None:
                _check_input_size(f"include[{i}].batch", rule.batch,
                                  rule.imgsz or max(self.image_sizes), self.max_input_gib)
        return self

    @model_validator(mode="after")
    def _rule_models(self):
        names = [spec.name for spec in self.models]
        rules = [(f"{what}[{i}]", r) for what in ("exclude", "include")
                 for i, r in enumerate(getattr(self, what))]
        rules += [(f"overrides[{i}].match", ov.match) for i, ov in enumerate(self.overrides)]
        for where, rule in rules:
            if rule.model is not None and rule.model not in names:
                raise ValueError(f"{where}.model: {_unknown('model', rule.model, names)}")
        return self

    @model_validator(mode="after")
    def _override_settings(self):
        """``overrides[].set`` obeys the same schema as the top-level keys it patches."""
        for i, ov in enumerate(self.overrides):
            for key, value in ov.set.items():
                ov.set[key] = _validated_setting(self, key, value, ("overrides", i, "set", key))
        return self


def _unknown(what: str, value: Any, known, extra: str = "") -> str:
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=1)
    hint = f" — did you mean '{close[0]}'?" if close else f" — known: {', '.join(map(str, known))}"
    return f"unknown {what} '{value}'{extra}{hint}"


def _check_name(what: str, value: str | None, known) -> str | None:
    if value is not None and value not in known:
        raise ValueError(_unknown(what, value, known))
    return value


def _check_input_size(where: str, batch: int, imgsz: int, limit_gib: float) -> None:
    size = batch * 3 * imgsz * imgsz * 4
    if size > limit_gib * 2**30:
        fits = max(1, int(limit_gib * 2**30 // (3 * imgsz * imgsz * 4)))
        raise ValueError(f"{where}: batch {batch} at image size {imgsz} needs a {_gib(size)} input "
                         f"tensor (batch x 3 x {imgsz}^2 x 4 bytes), above `max_input_gib: "
                         f"{limit_gib:g}`: use a batch of at most {fits}, or raise `max_input_gib` "
                         "if the machine has the memory")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**40 else f"{n / 2**40:,.1f} TiB"


_SETTINGS = {"eval": EvalSpec, "timing": TimingSpec, "calibration": CalibrationSpec,
             "alignment": AlignmentSpec}


def _validated_setting(m: "Matrix", key: str, value: Any, where: tuple) -> Any:
    """An override's value for ``key``, validated by the schema of the top-level key it patches."""
    if key == "timeout_s":
        try:
            return _TIMEOUT_S.validate_python(value)
        except ValidationError as exc:
            raise ValueError(f"{_loc(where)}: {_message(exc.errors()[0])}") from None
    spec = _SETTINGS[key]
    if not isinstance(value, dict):
        raise ValueError(f"{_loc(where)}: expected a mapping of {key} settings "
                         f"({', '.join(spec.model_fields)}), got {_shown(value)}")
    try:
        merged = spec.model_validate({**getattr(m, key).model_dump(), **value})
    except ValidationError as exc:
        raise ValueError(_first_error(exc, root=spec, prefix=where)) from None
    dumped = merged.model_dump()
    return {k: dumped[k] for k in value}


_TIMEOUT_S = TypeAdapter(Annotated[float, Field(gt=0)])


def _check_names(what: str, values: list[str], known) -> list[str]:
    for i, value in enumerate(values):
        if value not in known:
            raise ValueError(f"[{i}] {_unknown(what, value, known)}")
    return values


# ---------------------------------------------------------------- loading


def load(path: str | Path) -> tuple[Matrix, str]:
    """Parse and validate a matrix file; returns the matrix and its raw text."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.y*ml"))[:3]
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise UserError(f"matrix '{path}' is a directory{hint}: give the path of a matrix YAML file")
    if not path.is_file():
        raise UserError(f"matrix file '{path}' does not exist")
    text = _read_text(path, "matrix file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a matrix is a YAML mapping with `models`, `backends`, `dataset`...")
    return resolve_paths(parse(data, source=str(path)), path.parent), text


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} '{path}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                        f"offset {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{what} '{path}' could not be read ({exc.strerror}): check its "
                        "permissions") from None


def resolve_paths(m: Matrix, base: Path) -> Matrix:
    """Relative paths in a matrix are relative to the matrix file, not the working directory."""

    def fix(p: str | None) -> str | None:
        if p is None or p == "random" or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    for spec in m.models:
        spec.config, spec.checkpoint = resolve_config(spec.config, base), fix(spec.checkpoint)
        if spec.onnx is not None:
            spec.onnx.path = fix(spec.onnx.path)
        u = spec.ultralytics
        if u is not None and (u.model.endswith(".pt") or (base / u.model).is_file()):
            u.model = fix(u.model)  # else an Ultralytics config name such as yolov8n.yaml
    for ds in _datasets(m):
        ds.images, ds.annotations = fix(ds.images), fix(ds.annotations)
    for ov in m.overrides:
        source = (ov.set.get("calibration") or {}).get("source")
        if source:
            source["images"] = fix(source.get("images"))
            source["annotations"] = fix(source.get("annotations"))
    return m


def _datasets(m: Matrix) -> list[DatasetSpec]:
    return [ds for ds in (m.dataset, m.calibration.source, m.calibration.sensitivity_source)
            if ds is not None]


def check_files(m: Matrix, source: str) -> None:
    """Fail at plan time, before any cell runs, on a missing or unusable file the matrix names.

    Model configs are checked by :func:`harness.models.mmyolo_build.check_config` (parsed
    with mmengine where it is installed, else existence and syntax only); checkpoints,
    dataset and calibration files must exist.
    """
    for i, spec in enumerate(m.models):
        if spec.onnx is not None or spec.ultralytics is not None:
            continue  # harness.models.onnx_source.check_matrix reads and checks the graph
        config = spec.config or _packaged(spec.name)
        if config is not None:
            try:
                check_config(config)
            except UserError as exc:
                raise UserError(f"{source}: models[{i}].{'config' if spec.config else 'name'}: {exc}") from None
        if spec.checkpoint != "random" and not Path(spec.checkpoint).is_file():
            raise UserError(f"{source}: models[{i}].checkpoint: checkpoint '{spec.checkpoint}' does "
                            "not exist: give a .pth path (relative to the matrix file) or `random`")
        if spec.checkpoint != "random":
            from harness.models.checkpoint import sniff

            problem = sniff(spec.checkpoint)
            if problem:
                raise UserError(f"{source}: models[{i}].checkpoint: '{spec.checkpoint}': {problem}")
    _check_dataset_files(m.dataset, f"{source}: dataset")
    if m.calibration.source is not None:
        _check_dataset_files(m.calibration.source, f"{source}: calibration.source")
    if m.calibration.sensitivity_source is not None:
        _check_dataset_files(m.calibration.sensitivity_source, f"{source}: calibration.sensitivity_source")
    for i, ov in enumerate(m.overrides):
        src = (ov.set.get("calibration") or {}).get("source")
        if src:
            _check_dataset_files(DatasetSpec.model_validate(src),
                                 f"{source}: overrides[{i}].set.calibration.source")


def check_box_types(m: Matrix, source: str) -> dict[str, str]:
    """Plan-time check that every model's boxes match the dataset's ground truth.

    A rotated model (``harness.models.box_types``) needs a rotated dataset (COCO file with
    ``info.box_type: rotated``) and a horizontal model a horizontal one: AP of one against
    the other's ground truth would measure nothing.  Returns model name -> box type (cells
    carry it as ``box_type``); a mismatch is a UserError naming the model, the dataset and
    the fix.  Call after :func:`check_files` (the files exist).
    """
    datasets = [_dataset_box_type(m.dataset, "dataset", source)]
    if m.calibration.sensitivity_source is not None:  # AP is measured there too
        datasets.append(_dataset_box_type(m.calibration.sensitivity_source,
                                          "calibration.sensitivity_source", source))
    out = {}
    for i, spec in enumerate(m.models):
        kind, why = _model_box_type(spec)
        out[spec.name] = kind
        for ds_kind, ds_text in datasets:
            if ds_kind != kind:
                fix = ("give a rotated dataset (COCO json with info.box_type: rotated, e.g. "
                       "`detbench synth --rotated`) or a horizontal-box model" if kind == "rotated"
                       else "give a rotated model (an RTMDetRotatedHead config such as the rotated "
                            "family) or a horizontal-box dataset")
                raise UserError(f"{source}: models[{i}] '{spec.name}' predicts {kind} boxes ({why}) "
                                f"but {ds_text} {ds_kind} boxes: {fix}")
    return out


def _model_box_type(spec: ModelSpec) -> tuple[str, str]:
    from harness.models.box_types import HORIZONTAL, config_file_box_type

    if spec.onnx is not None or spec.ultralytics is not None:
        return HORIZONTAL, "onnx:/ultralytics: models give axis-aligned boxes"
    config = spec.config or _packaged(spec.name)
    if config is None:  # mmyolo not installed: its cells say so; nothing to compare here
        return HORIZONTAL, "config not available"
    return config_file_box_type(config)


def _dataset_box_type(ds: DatasetSpec, where: str, source: str) -> tuple[str, str]:
    """(box type, "<where> holds" in words) of a dataset section; synthetic sets are made to order."""
    if ds.synth is not None:
        kind = "rotated" if getattr(ds.synth, "rotated", False) else "horizontal"
        return kind, f"{where}.synth generates"
    from harness.data.datasets import box_type

    kind = box_type(ds.annotations, where=f"{source}: {where}.annotations")
    info = "info.box_type: rotated" if kind == "rotated" else "no info.box_type: rotated"
    return kind, f"{where}.annotations '{ds.annotations}' ({info}) holds"


def _packaged(name: str) -> str | None:
    """The packaged config of a table name; None where mmyolo is not installed (a cell says so)."""
    path = packaged_config(name) if name in KNOWN_MODELS else None
    return None if path is None else str(path)


def _check_dataset_files(ds: DatasetSpec, where: str) -> None:
    if ds.synth is not None:
        return
    if not Path(ds.annotations).is_file():
        raise UserError(f"{where}.annotations: '{ds.annotations}' does not exist; give the path of "
                        "a COCO instances json (relative paths are relative to the matrix file)")
    if not Path(ds.images).is_dir():
        raise UserError(f"{where}.images: '{ds.images}' is not a directory of images")


def parse(data: dict, source: str = "<matrix>") -> Matrix:
    try:
        return Matrix.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {_first_error(exc, data)}") from None


def _first_error(exc: ValidationError, data: Any = None, *, root: type[BaseModel] | None = None,
                 prefix: tuple = ()) -> str:
    """One readable line for the first error: the YAML path, what is wrong, the fix.

    ``root``/``prefix``: the model that was validated and where it sits in the matrix
    (an override's ``set:`` section is validated by the section's own model).
    """
    err = exc.errors()[0]
    loc = _loc(prefix + tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        parent = _parent_model(err["loc"], root or Matrix)
        key = err["loc"][-1]
        return f"{loc}: {_unknown('key', key, list(parent.model_fields) if parent else [])}"
    if err["type"] == "missing":
        return f"{loc}: required key missing"
    msg = _message(err, root or Matrix)
    if msg.startswith("["):  # our list validators prefix the index
        idx, rest = msg.split("] ", 1)
        return f"{loc}{idx}]: {rest}"
    return f"{loc}: {msg}" if loc else msg


def _message(err: dict, root: type[BaseModel] | None = None) -> str:
    """pydantic's message in the matrix's words: no class names, the value received and the fix."""
    kind, value = err["type"], err.get("input")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        if isinstance(value, str):
            return (f"{value!r} is text, not an integer: write the number in plain digits "
                    "without quotes (YAML reads 1e9 or '8' as text), e.g. 8")
        return f"expected an integer, got {_shown(value)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        model = _parent_model(tuple(err["loc"]) + ("?",), root) if root else None
        keys = f" with keys {', '.join(model.model_fields)}" if model else ""
        return f"expected a mapping{keys}, got {_shown(value)}"
    if kind == "list_type":
        return f"expected a list, e.g. [{value}], got {_shown(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_shown(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_shown(value)}"
    msg = err["msg"].removeprefix("Value error, ")
    if kind.startswith(("greater_than", "less_than")):
        msg = f"{msg.replace('Input should be', 'must be')}, got {_shown(value)}"
    elif kind == "literal_error":
        msg = f"{_shown(value)} is not allowed: {msg.replace('Input should be', 'use')}"
    return msg


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return f"{type(value).__name__} {value!r}" if isinstance(value, (list, dict)) else repr(value)


def _loc(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _parent_model(loc, root: type[BaseModel] | None = None) -> type[BaseModel] | None:
    model: Any = root or Matrix
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
    return [cell for c in axes for cell in _calibration_variants(_settle(c, m, models[c["model"]]))]


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
    cell["skip_reason"] = BACKENDS[axes["backend"]].static_skip_reason(axes) or _onnx_skip(spec, axes)
    return cell


INT8_PRECISIONS = ("int8", "int8-mixed")


def calibration_sweep(calibration: dict) -> list[tuple[str, int]]:
    """The (method, images) points of a calibration section: one, or a study's method × images."""
    methods, sizes = calibration["method"], calibration["images"]
    methods = methods if isinstance(methods, list) else [methods]
    sizes = sizes if isinstance(sizes, list) else [sizes]
    return [(method, size) for size in sizes for method in methods]


def _calibration_variants(cell: dict) -> list[dict]:
    """An int8 cell once per point of its calibration sweep, each with scalar settings.

    Only a sweep of several points changes the key: ``.../nms-none/cal-entropy-128``, so a
    plain matrix keeps its keys (and its cells' history).  Cells of other precisions never
    calibrate: they get the sweep's first point, and no variant.
    """
    points = calibration_sweep(cell["calibration"])
    if cell["precision"] not in INT8_PRECISIONS or len(points) == 1:
        method, size = points[0]
        return [{**cell, "calibration": {**cell["calibration"], "method": method, "images": size},
                 "calibration_variant": None}]
    out = []
    for method, size in points:
        variant = f"{method}-{size}"
        out.append({**cell, "key": f"{cell['key']}/cal-{variant}", "calibration_variant": variant,
                    "calibration": {**cell["calibration"], "method": method, "images": size}})
    return out


def _onnx_skip(spec: ModelSpec, axes: dict) -> str | None:
    """What an ``onnx:`` model can never run: PyTorch, and the nms axis (its NMS is its own)."""
    if spec.onnx is None and spec.ultralytics is None:
        return None
    if axes["backend"] == "pytorch":
        kind = "onnx" if spec.onnx is not None else "ultralytics"
        return f"an {kind}: model runs (as ONNX) on onnxruntime and tensorrt, not pytorch"
    if axes["nms"] != "none":
        return ("the nms axis applies to detbench's exports; an onnx: model's NMS is given by its "
                "output convention")
    return None


def cell_key(axes: dict) -> str:
    """A readable, unique name of a cell within its run."""
    return "{model}/{backend}/{precision}/b{batch}/s{imgsz}/{device}/nms-{nms}".format(**axes)


def matrix_hash(m: Matrix) -> str:
    """What the matrix measures; ``check`` (how runs are judged afterwards) is left out."""
    data = m.model_dump(exclude={"check"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


DatasetSpec.model_rebuild()
