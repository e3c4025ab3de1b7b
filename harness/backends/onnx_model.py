"""What ONNX Runtime and TensorRT share when a cell's model is a user's ONNX file (``onnx:``).

The graph is used as given (no export): its contract says how inputs are made
(:mod:`harness.models.onnx_preprocess`) and how outputs become detections
(:mod:`harness.models.onnx_outputs`); model labels are mapped onto the
dataset's categories by name, and classes the dataset lacks are reported.
Precision: fp16 converts the graph (fp32 I/O kept), int8 quantizes it with the
shared calibration unless it already holds Q/DQ nodes, which are used as is.
"""
from __future__ import annotations

from pathlib import Path

from harness.backends.base import SkipCell


class OnnxModel:
    def __init__(self, ctx, info):
        self.ctx, self.info = ctx, info
        self.cell = ctx.cell

    def load(self) -> None:
        """Contract, class mapping and a finite-output probe (stage ``load``)."""
        from harness.models.onnx_source import Categories, class_mapping

        c = self.contract = self.ctx.onnx_contract
        ds = self.ctx.dataset
        kind = "ultralytics" if self.ctx.model_spec.get("ultralytics") else "onnx"
        where = f"models[{self.ctx.model_spec['name']}].{kind}"
        self.mapping, unmapped = class_mapping(c, Categories(ds.category_names, ds.category_ids), where)
        self.unscored = len(ds.category_ids)
        if unmapped:
            self.info.warnings.append(
                f"{len(unmapped)} model classes are not in the dataset and their detections are not "
                f"scored: {', '.join(unmapped[:12])}{' ...' if len(unmapped) > 12 else ''}")
        self.test_cfg = self.ctx.onnx_test_cfg()
        self.height, self.width = c.input_hw(self.cell["imgsz"])
        self.info.facts.update({"model_source": "ultralytics" if self.ctx.export_facts else "onnx",
                                "onnx": c.path, "onnx_sha256": c.sha256, "contract": c.as_dict(),
                                "unmapped_classes": unmapped, **self.ctx.export_facts})
        self._probe()

    def _probe(self) -> None:
        """Run the graph once on CPU on the first image: NaN/Inf outputs fail the cell at load."""
        import onnxruntime as ort

        from harness.models.onnx_outputs import check_finite

        ds = self.ctx.dataset
        prepared = self.ctx.preprocessor("cpu")([ds.read(ds.images[0])], [ds.images[0].id])
        x = prepared.inputs.numpy()
        if self.contract.batch and self.contract.batch > 1:
            import numpy as np

            x = np.repeat(x, self.contract.batch, axis=0)
        try:
            session = ort.InferenceSession(self.contract.path, providers=["CPUExecutionProvider"])
            names = [o.name for o in session.get_outputs()]
            outs = session.run(names, {self.contract.input_name: x})
        except Exception as exc:  # the graph does not run on its own declared input
            from harness.errors import UserError

            raise UserError(f"onnx.path ({self.contract.path}): the graph does not run on the contract's "
                            f"input {list(x.shape)} {x.dtype}: {type(exc).__name__}: {str(exc)[:200]}") from None
        check_finite(dict(zip(names, outs)), self.contract)

    def precision_graph(self, *, allow_calibrator=False):
        """The graph for the cell's precision and its facts (stage ``build``)."""
        c, precision = self.contract, self.cell["precision"]
        path = Path(c.path)
        if c.has_qdq:
            if precision == "fp16":
                raise SkipCell("the graph already holds Q/DQ nodes (an int8 model): fp16 does not apply")
            self.info.facts["precision_source"] = "the graph's own Q/DQ nodes, used as is"
            if precision == "fp32":
                self.info.warnings.append("the graph holds Q/DQ nodes: this fp32 cell runs it as quantized")
            return path, {}
        if precision == "fp16":
            if c.dtype == "float16":
                return path, {"precision_source": "the graph's own float16 input"}
            from harness.export.fp16 import to_fp16

            return to_fp16(path, self.ctx.cache_dir)
        if precision == "int8":
            from harness.calibration.qdq import quantize_qdq

            calib = self.ctx.calibration_set()
            cal = self.cell["calibration"]
            out, info = quantize_qdq(path, calib, cal["method"], cal["percentile"], self.ctx.cache_dir,
                                     input_name=c.input_name, smoothing=cal.get("smoothing"))
            self.info.warnings.extend(self.ctx.same_scales_warning(info))
            return out, info
        return path, {}

    def outputs_dict(self, names, outputs) -> dict:
        import numpy as np

        return {n: (o.cpu().numpy() if hasattr(o, "cpu") else np.asarray(o)) for n, o in zip(names, outputs)}

    def postprocess(self, names, outputs, metas):
        from harness.models.onnx_outputs import ADAPTERS, check_finite, relabel

        out = self.outputs_dict(names, outputs)
        check_finite(out, self.contract)
        dets = ADAPTERS[self.contract.convention](out, self.contract, metas, self.test_cfg,
                                                  self.height, self.width)
        return relabel(dets, self.mapping, self.unscored)

    def decoded(self, names, outputs):
        """yolo_raw only: decoded boxes and scores, score columns in the dataset's category order."""
        import numpy as np

        from harness.models.onnx_outputs import decode_yolo_raw

        if self.contract.convention != "yolo_raw":
            return None
        boxes, scores = decode_yolo_raw(self.outputs_dict(names, outputs), self.contract,
                                        self.height, self.width)
        ordered = np.zeros(scores.shape[:2] + (self.unscored,), dtype=np.float32)
        for i, j in enumerate(self.mapping[:scores.shape[-1]]):
            if j < self.unscored:
                ordered[..., j] = np.maximum(ordered[..., j], scores[..., i])
        return boxes, ordered
