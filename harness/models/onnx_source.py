"""A model brought as an ONNX file: its declared contract, checked against the graph.

The matrix's ``onnx:`` block (:class:`OnnxSource`) says how images become the
graph's input (size, resize mode, colour order, layout, scale/mean/std, dtype)
and how its outputs become detections (convention, output names, box format,
classes).  :func:`resolve` reads the graph with ``onnx`` (imported lazily, so
planning a matrix without ONNX models imports nothing heavy), fills every field
the graph settles unambiguously (recorded in ``inferred``, printed by
``detbench plan``) and refuses, in one line naming the file and the field, a
contract that contradicts the graph or leaves something ambiguous.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.errors import UserError

CONVENTIONS = ("end2end", "dets", "yolo_raw")
#: the end2end outputs and the names exporters give them (EfficientNMS, easydeploy, Ultralytics)
END2END_ROLES = {
    "num_dets": ("num_dets", "num_detections", "num", "num_det"),
    "boxes": ("boxes", "det_boxes", "detection_boxes", "bboxes"),
    "scores": ("scores", "det_scores", "detection_scores"),
    "labels": ("labels", "det_classes", "detection_classes", "classes", "det_labels"),
}
DETS_COLUMNS_DEFAULT = ("box", "score", "class")

COCO80 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputContract(_Strict):
    """How an image (BGR uint8, as cv2 reads it) becomes the graph's input tensor.

    ``x = (pixel * scale - mean) / std`` per channel, in the declared colour
    order; a ``uint8`` input takes the raw resized pixels.
    """

    name: Optional[str] = None
    size: Optional[Union[int, tuple[int, int]]] = Field(default=None, description="[height, width]")
    resize: Literal["letterbox", "stretch", "keep_ratio"] = "letterbox"
    pad_value: float = Field(default=114, ge=0, le=255)
    color: Literal["RGB", "BGR"] = "RGB"
    layout: Optional[Literal["NCHW", "NHWC"]] = None
    scale: float = Field(default=1 / 255, gt=0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dtype: Optional[Literal["float32", "float16", "uint8"]] = None

    def normalises(self) -> bool:
        """Whether scale/mean/std differ from the default 0-1 scaling (a uint8 input takes none)."""
        return (abs(self.scale - 1 / 255) > 1e-12 or any(self.mean) or any(s != 1 for s in self.std))

    @model_validator(mode="after")
    def _uint8_raw(self):
        if self.dtype == "uint8" and self.normalises():
            raise ValueError("a uint8 input takes raw pixels: remove scale/mean/std")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        return self


class OutputContract(_Strict):
    convention: Optional[Literal["end2end", "dets", "yolo_raw"]] = None
    names: dict[str, str] = Field(default_factory=dict, description="role -> graph output name")
    box_format: Optional[Literal["xyxy", "xywh", "cxcywh"]] = None
    normalized: bool = False
    columns: Optional[list[Literal["box", "score", "class", "batch"]]] = None
    raw_layout: Optional[Literal["v8", "v5"]] = Field(
        default=None, description="yolo_raw: v8 = [N, 4+C, A]; v5 = [N, A, 5+C] with objectness")


class ReferenceRule(_Strict):
    """The cell an ONNX model's cells are aligned with (default: ONNX Runtime, CPU, fp32)."""

    backend: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$")


class OnnxSource(_Strict):
    """The matrix's ``onnx:`` block of a model."""

    path: str
    input: InputContract = Field(default_factory=InputContract)
    output: OutputContract = Field(default_factory=OutputContract)
    classes: Optional[Union[Literal["coco80"], list[str]]] = None
    class_map: dict[str, Union[str, int]] = Field(
        default_factory=dict, description="model class name -> dataset category name or id")
    reference: ReferenceRule = Field(default_factory=ReferenceRule)


# ------------------------------------------------------------------------------ graph facts


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple  # ints, or str for symbolic/unknown dims
    dtype: str


@dataclass(frozen=True)
class GraphFacts:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    metadata: dict
    has_qdq: bool
    op_types: frozenset


_ONNX_DTYPES = {1: "float32", 10: "float16", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 11: "float64",
                9: "bool", 16: "bfloat16"}


def sniff(path: str | Path, where: str = "onnx.path") -> GraphFacts:
    """The graph's I/O, metadata and whether it already holds Q/DQ; a clear error if not ONNX."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{where}: '{path}' does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends: a truncated or foreign file
        raise UserError(f"{where}: '{path}' is not a readable ONNX model ({type(exc).__name__}: "
                        f"{str(exc)[:120]})") from None
    graph = proto.graph
    if not graph.output or not graph.node:
        raise UserError(f"{where}: '{path}' is not a usable ONNX model (empty graph: truncated file?)")
    inits = {i.name for i in graph.initializer}

    def tensor(v) -> Tensor:
        tt = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in tt.shape.dim)
        return Tensor(v.name, dims, _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)))

    ops = frozenset(n.op_type for n in graph.node)
    return GraphFacts(inputs=tuple(tensor(v) for v in graph.input if v.name not in inits),
                      outputs=tuple(tensor(v) for v in graph.output),
                      metadata={p.key: p.value for p in proto.metadata_props},
                      has_qdq=bool({"QuantizeLinear", "DequantizeLinear"} & ops), op_types=ops)


# ------------------------------------------------------------------------------ the contract


@dataclass
class Contract:
    """Every field settled: what the preprocessor and the output adapter run with."""

    path: str
    sha256: str
    input_name: str
    height: int | None  # None: dynamic, taken from the cell's imgsz
    width: int | None
    batch: int | None  # None: dynamic
    resize: str
    pad_value: float
    color: str
    layout: str
    scale: float
    mean: tuple
    std: tuple
    dtype: str
    convention: str
    outputs: dict  # role -> graph output name
    box_format: str
    normalized: bool
    columns: tuple | None
    raw_layout: str | None
    num_classes: int | None
    classes: tuple | None
    class_map: dict
    has_qdq: bool
    reference: dict
    inferred: list = field(default_factory=list)  # "field = value (from ...)" lines for `plan`

    def input_hw(self, imgsz: int) -> tuple[int, int]:
        return (self.height or imgsz, self.width or imgsz)

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def resolve(spec: OnnxSource | dict, where: str = "onnx") -> Contract:
    """Sniff the graph and settle the contract; UserError naming ``<where>.<field>`` and the file."""
    from harness.measure.provenance import file_hash

    if isinstance(spec, dict):
        spec = OnnxSource.model_validate(spec)
    path = Path(spec.path)
    facts = sniff(path, f"{where}.path")
    fail = _failer(where, path)
    inferred: list[str] = []
    inp = _resolve_input(spec.input, facts, fail, inferred)
    out = _resolve_output(spec, facts, fail, inferred)
    return Contract(path=str(path), sha256=file_hash(path), **inp, **out, class_map=dict(spec.class_map),
                    has_qdq=facts.has_qdq, reference=spec.reference.model_dump(), inferred=inferred)


def _failer(where: str, path: Path):
    def fail(fld: str, msg: str):
        raise UserError(f"{where}.{fld} ({path.name}): {msg}")
    return fail


def _resolve_input(ic: InputContract, facts: GraphFacts, fail, inferred: list) -> dict:
    names = [t.name for t in facts.inputs]
    if ic.name is not None:
        if ic.name not in names:
            fail("input.name", f"the graph has no input '{ic.name}' (inputs: {', '.join(names)})")
        name = ic.name
    elif len(names) == 1:
        name = names[0]
        inferred.append(f"input.name = {name}")
    else:
        fail("input.name", f"the graph has {len(names)} inputs ({', '.join(names)}): name the image one")
    t = next(t for t in facts.inputs if t.name == name)
    if len(t.shape) != 4:
        fail("input", f"input '{name}' has shape {list(t.shape)}: an image input is 4-D")
    layout = _layout(ic.layout, t, fail, inferred)
    h, w = (t.shape[2], t.shape[3]) if layout == "NCHW" else (t.shape[1], t.shape[2])
    gh, gw = (h if isinstance(h, int) and h > 0 else None), (w if isinstance(w, int) and w > 0 else None)
    if ic.size is not None:
        dh, dw = (ic.size, ic.size) if isinstance(ic.size, int) else ic.size
        if (gh and gh != dh) or (gw and gw != dw):
            fail("input.size", f"declared {dh}x{dw} but input '{name}' is {gh}x{gw} in the graph")
        gh, gw = dh, dw
    elif gh and gw:
        inferred.append(f"input.size = [{gh}, {gw}] (graph)")
    batch = t.shape[0] if isinstance(t.shape[0], int) and t.shape[0] > 0 else None
    inferred.append(f"batch = {batch if batch else 'dynamic'} (graph)")
    graph_dtype = t.dtype
    if graph_dtype not in ("float32", "float16", "uint8"):
        fail("input.dtype", f"input '{name}' is {graph_dtype}: detbench feeds float32, float16 or uint8")
    if ic.dtype is not None and ic.dtype != graph_dtype:
        fail("input.dtype", f"declared {ic.dtype} but input '{name}' is {graph_dtype} in the graph")
    if ic.dtype is None:
        inferred.append(f"input.dtype = {graph_dtype} (graph)")
    if graph_dtype == "uint8" and ic.normalises():
        fail("input.scale", f"input '{name}' is uint8, which takes raw pixels: remove scale/mean/std")
    return {"input_name": name, "height": gh, "width": gw, "batch": batch, "resize": ic.resize,
            "pad_value": ic.pad_value, "color": ic.color, "layout": layout, "scale": ic.scale,
            "mean": tuple(ic.mean), "std": tuple(ic.std), "dtype": graph_dtype}


def _layout(declared, t: Tensor, fail, inferred: list) -> str:
    c1, c3 = t.shape[1], t.shape[3]
    if declared is not None:
        ch = c1 if declared == "NCHW" else c3
        if isinstance(ch, int) and ch != 3:
            fail("input.layout", f"declared {declared} but input '{t.name}' has shape {list(t.shape)}: "
                                 f"its channel dimension would be {ch}, not 3")
        return declared
    if c1 == 3 and c3 != 3:
        inferred.append("input.layout = NCHW (graph)")
        return "NCHW"
    if c3 == 3 and c1 != 3:
        inferred.append("input.layout = NHWC (graph)")
        return "NHWC"
    fail("input.layout", f"input '{t.name}' has shape {list(t.shape)}: cannot tell NCHW from NHWC; "
                         "set input.layout")


def _declared_classes(spec: OnnxSource, facts: GraphFacts, fail, inferred: list) -> tuple | None:
    if spec.classes == "coco80":
        return COCO80
    if spec.classes is not None:
        return tuple(spec.classes)
    names = facts.metadata.get("names")  # Ultralytics: "{0: 'person', 1: 'bicycle', ...}"
    if names:
        try:
            parsed = ast.literal_eval(names)
            parsed = [parsed[k] for k in sorted(parsed)] if isinstance(parsed, dict) else list(parsed)
            inferred.append(f"classes = {len(parsed)} names (graph metadata 'names')")
            return tuple(str(n) for n in parsed)
        except (ValueError, SyntaxError, TypeError):
            fail("classes", "the graph's metadata 'names' cannot be read: give `classes`")
    return None


def _resolve_output(spec: OnnxSource, facts: GraphFacts, fail, inferred: list) -> dict:
    oc = spec.output
    outs = {t.name: t for t in facts.outputs}
    for role, name in oc.names.items():
        if name not in outs:
            fail(f"output.names.{role}", f"the graph has no output '{name}' (outputs: {', '.join(outs)})")
    convention = oc.convention or _sniff_convention(oc, facts, fail)
    if oc.convention is None:
        inferred.append(f"output.convention = {convention} (graph)")
    classes = _declared_classes(spec, facts, fail, inferred)
    mapped, columns, raw_layout, num_classes = {}, None, None, None
    if convention == "end2end":
        mapped = _end2end_names(oc, outs, fail, inferred)
    else:
        allowed = {"dets": "dets", "yolo_raw": "raw"}[convention]
        unknown = set(oc.names) - {allowed}
        if unknown:
            fail(f"output.names.{sorted(unknown)[0]}", f"the {convention} convention has one output, "
                                                        f"role '{allowed}'")
        if oc.names:
            mapped = {allowed: oc.names[allowed]}
        elif len(outs) == 1:
            mapped = {allowed: next(iter(outs))}
        else:
            fail(f"output.names.{allowed}", f"the graph has {len(outs)} outputs ({', '.join(outs)}): "
                                            f"name the {convention} one")
        t = outs[mapped[allowed]]
        if len(t.shape) != 3:
            fail("output.convention", f"{convention} expects a 3-D output; '{t.name}' has shape "
                                      f"{list(t.shape)}")
        if convention == "dets":
            columns = _dets_columns(oc, t, fail, inferred)
        else:
            raw_layout, num_classes = _raw_layout(oc, t, classes, fail, inferred)
    if num_classes is not None and classes is not None and len(classes) < num_classes:
        fail("classes", f"{len(classes)} class names for a model with {num_classes} classes "
                        f"(output '{mapped['raw']}')")
    box_format = oc.box_format or ("cxcywh" if convention == "yolo_raw" else "xyxy")
    if oc.box_format is None:
        inferred.append(f"output.box_format = {box_format} (convention default)")
    return {"convention": convention, "outputs": mapped, "box_format": box_format,
            "normalized": oc.normalized, "columns": columns, "raw_layout": raw_layout,
            "num_classes": num_classes, "classes": classes}


def _sniff_convention(oc: OutputContract, facts: GraphFacts, fail) -> str:
    outs = facts.outputs
    if oc.names:
        roles = set(oc.names)
        if roles <= set(END2END_ROLES):
            return "end2end"
        if roles == {"dets"}:
            return "dets"
        if roles == {"raw"}:
            return "yolo_raw"
    if len(outs) == 4:
        return "end2end"
    if len(outs) == 1 and len(outs[0].shape) == 3:
        k, last = outs[0].shape[1], outs[0].shape[-1]
        if last in (6, 7):
            if isinstance(k, int) and k > 1000:  # as likely a v5 head with 1-2 classes as a detection list
                fail("output.convention", f"output '{outs[0].name}' {list(outs[0].shape)} could be dets "
                                          f"[N, K, {last}] or a v5 yolo_raw head with {last - 5} classes: "
                                          "set output.convention")
            return "dets"
        return "yolo_raw"
    fail("output.convention", f"outputs {[f'{t.name}{list(t.shape)}' for t in outs]} match no known "
                              f"convention: set output.convention ({' | '.join(CONVENTIONS)}) and "
                              "output.names")


def _end2end_names(oc: OutputContract, outs: dict, fail, inferred: list) -> dict:
    mapped = dict(oc.names)
    for role, aliases in END2END_ROLES.items():
        if role in mapped:
            continue
        found = [n for n in outs if n.lower() in aliases]
        if len(found) != 1:
            fail(f"output.names.{role}", f"cannot tell which output is '{role}' (outputs: "
                                         f"{', '.join(outs)}): map it in output.names")
        mapped[role] = found[0]
        inferred.append(f"output.names.{role} = {found[0]} (graph)")
    return mapped


def _dets_columns(oc: OutputContract, t: Tensor, fail, inferred: list) -> tuple:
    width = t.shape[-1]
    if oc.columns is not None:
        cols = tuple(oc.columns)
        if sorted(c for c in cols if c != "batch") != ["box", "class", "score"] or cols.count("batch") > 1:
            fail("output.columns", f"{list(cols)}: give box, score and class once each (and optionally batch)")
        n = 4 + len(cols) - 1
        if isinstance(width, int) and width != n:
            fail("output.columns", f"{list(cols)} is {n} values but output '{t.name}' has {width} per "
                                   "detection")
        return cols
    if isinstance(width, int) and width not in (6, 7):
        fail("output.convention", f"dets is [N, K, 6|7] but output '{t.name}' is {list(t.shape)}")
    if width == 6:
        inferred.append("output.columns = [box, score, class] (6 values per detection)")
        return DETS_COLUMNS_DEFAULT
    fail("output.columns", f"output '{t.name}' has {width} values per detection: say where box, score, "
                           "class and batch sit, e.g. [batch, box, score, class]")


def _raw_layout(oc: OutputContract, t: Tensor, classes, fail, inferred: list):
    d1, d2 = t.shape[1], t.shape[2]
    layout = oc.raw_layout
    if layout is not None and not (isinstance(d1, int) and isinstance(d2, int)):
        # a graph exported with dynamic height/width (Ultralytics' dynamic=True): symbolic anchors
        ch = d1 if layout == "v8" else d2
        if isinstance(ch, int):
            return layout, ch - (4 if layout == "v8" else 5)
        if classes is None:
            fail("classes", f"output '{t.name}' {list(t.shape)} has a symbolic class dimension: give "
                            "`classes` (their number is the model's class count)")
        return layout, len(classes)
    if not (isinstance(d1, int) and isinstance(d2, int)):
        fail("output.raw_layout", f"output '{t.name}' has shape {list(t.shape)}: set output.raw_layout "
                                  "(v8 | v5); its dimensions are not static")
    if layout is None:
        if d1 < d2:
            layout = "v8"
        elif classes is not None and d2 == 5 + len(classes):
            layout = "v5"
        else:
            fail("output.raw_layout", f"output '{t.name}' {list(t.shape)} could be v5 ([N, A, 5+C], "
                                      "objectness) or a transposed v8: set output.raw_layout "
                                      "(or give `classes`)")
        inferred.append(f"output.raw_layout = {layout} (graph shape {list(t.shape)})")
    if layout == "v8":
        if d1 > d2:
            fail("output.raw_layout", f"v8 is [N, 4+C, A] but output '{t.name}' is {list(t.shape)}")
        return layout, d1 - 4
    if d2 < 6:
        fail("output.raw_layout", f"v5 is [N, A, 5+C] but output '{t.name}' is {list(t.shape)}")
    return layout, d2 - 5


# ------------------------------------------------------------------------------ classes


def class_mapping(contract: Contract, category_names, where: str = "onnx") -> tuple[list[int], list[str]]:
    """Model label -> dataset category index (``len(categories)`` = not scored) and the unmapped names.

    By name (case-insensitive, ``class_map`` first); without class names, the
    model's labels index the dataset's categories in id order, as for mmyolo models.
    """
    cats = [str(n) for n in category_names]
    lower = {n.lower(): i for i, n in enumerate(cats)}
    if contract.classes is None:
        if contract.class_map:
            raise UserError(f"{where}.class_map ({Path(contract.path).name}): needs `classes` "
                            "(the model's class names)")
        n = contract.num_classes or len(cats)
        return [i if i < len(cats) else len(cats) for i in range(n)], [f"#{i}" for i in range(len(cats), n)]
    by_id = {}
    mapping, unmapped = [], []
    for name in contract.classes:
        explicit = name in contract.class_map
        target = contract.class_map.get(name, name)
        if explicit and (isinstance(target, int) or (str(target).lstrip("-").isdigit()
                                                     and str(target).lower() not in lower)):
            by_id = by_id or _ids(category_names)
            idx = by_id.get(int(target))
            if idx is None:
                raise UserError(f"{where}.class_map.{name} ({Path(contract.path).name}): the dataset "
                                f"has no category id {target}")
        else:
            idx = lower.get(str(target).lower())
        if idx is None:
            unmapped.append(name)
            idx = len(cats)
        mapping.append(idx)
    return mapping, unmapped


def _ids(category_names) -> dict:
    ids = getattr(category_names, "ids", None)
    return {int(c): i for i, c in enumerate(ids)} if ids is not None else {}


class Categories(tuple):
    """Dataset category names that also carry their ids (for ``class_map`` by id)."""

    def __new__(cls, names, ids):
        obj = super().__new__(cls, names)
        obj.ids = tuple(ids)
        return obj


# ------------------------------------------------------------------------------ matrix checks


def check_matrix(models, source: str) -> dict[str, Contract]:
    """Resolve every ``onnx:`` model of a matrix (plan and run time): UserError on a bad contract."""
    out = {}
    for i, spec in enumerate(models):
        if getattr(spec, "ultralytics", None) is not None:
            from harness.models.ultralytics_source import check_model

            check_model(spec.ultralytics, f"{source}: models[{i}].ultralytics")
        if getattr(spec, "onnx", None) is not None:
            out[spec.name] = resolve(spec.onnx, f"{source}: models[{i}].onnx")
    return out


def cell_skip_reason(contract: Contract, cell: dict) -> str | None:
    """Cells a fixed-shape graph cannot run: another batch or image size."""
    if contract.batch is not None and cell["batch"] != contract.batch:
        return f"the graph's input '{contract.input_name}' has a fixed batch of {contract.batch}"
    if contract.height and contract.width and cell["imgsz"] != max(contract.height, contract.width):
        return (f"the graph's input '{contract.input_name}' is fixed at {contract.height}x{contract.width}"
                f" (use image_sizes [{max(contract.height, contract.width)}])")
    return None


def apply_to_cells(cells: list[dict], contracts: dict[str, Contract]) -> None:
    for cell in cells:
        contract = contracts.get(cell["model"])
        if contract is not None and not cell["skip_reason"]:
            cell["skip_reason"] = cell_skip_reason(contract, cell)


def check_classes(contracts: dict[str, Contract], models, dataset: dict, source: str) -> None:
    """At run creation: ``class_map`` entries must name categories the dataset has."""
    import json

    if not contracts:
        return
    data = json.loads(Path(dataset["annotations"]).read_text())
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    names = Categories([c["name"] for c in cats], [c["id"] for c in cats])
    for i, spec in enumerate(models):
        if spec.name in contracts:
            contract = contracts[spec.name]
            for model_name, target in contract.class_map.items():
                if contract.classes is not None and model_name not in contract.classes:
                    raise UserError(f"{source}: models[{i}].onnx.class_map.{model_name} "
                                    f"({Path(contract.path).name}): the model has no class '{model_name}'")
                known = {str(n).lower() for n in names} | {str(c) for c in names.ids}
                if str(target).lower() not in known:
                    raise UserError(f"{source}: models[{i}].onnx.class_map.{model_name} "
                                    f"({Path(contract.path).name}): the dataset has no category "
                                    f"'{target}' (categories: {', '.join(map(str, names))})")
            class_mapping(contract, names, f"{source}: models[{i}].onnx")


def describe(contract: Contract) -> str:
    """One paragraph for ``detbench plan``: the contract a model runs with and what was inferred."""
    c = contract
    size = f"{c.height}x{c.width}" if c.height else "dynamic (the cell's imgsz)"
    norm = "raw uint8 pixels" if c.dtype == "uint8" else f"x*{c.scale:.6g}, mean {list(c.mean)}, std {list(c.std)}"
    classes = (f"{len(c.classes)} names" if c.classes is not None else
               "none given: labels index the dataset's categories in id order")
    lines = [f"{Path(c.path).name} (sha256 {c.sha256[:16]}){'  [holds Q/DQ: int8 as is]' if c.has_qdq else ''}",
             f"  input  {c.input_name}: {c.layout} {c.dtype}, {size}, batch {c.batch or 'dynamic'}, "
             f"{c.resize}{f' (pad {c.pad_value:g})' if c.resize != 'stretch' else ''}, {c.color}, {norm}",
             f"  output {c.convention}: {c.outputs}, boxes {c.box_format}"
             f"{' normalised' if c.normalized else ' pixels'}"
             + (f", columns {list(c.columns)}" if c.columns else "")
             + (f", layout {c.raw_layout}, {c.num_classes} classes" if c.raw_layout else ""),
             f"  classes: {classes}; reference cell: {c.reference['backend']} {c.reference['precision']} "
             f"{c.reference['device']}"]
    if c.inferred:
        lines.append("  inferred: " + "; ".join(c.inferred))
    return "\n".join(lines)


def print_contracts(contracts: dict[str, Contract]) -> None:
    for name, contract in contracts.items():
        print(f"onnx model {name}: {describe(contract)}")
