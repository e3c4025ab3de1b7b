"""What a cell's worker knows: its settings, model config, dataset and cache."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from harness.data.coco import CocoDataset
from harness.errors import UserError
from harness.models.table import packaged_config


@dataclass
class CellContext:
    cell: dict
    work_dir: Path
    cache_dir: Path
    notes: list = field(default_factory=list)
    stages: object = None  # the worker's stage tracker: runners report export/build through it
    export_facts: dict = field(default_factory=dict)  # an ultralytics: model's exporter and version

    def stage(self, name: str) -> None:
        if self.stages is not None:
            self.stages.enter(name)

    @property
    def model_spec(self) -> dict:
        return self.cell["model_spec"]

    @property
    def config_path(self) -> Path:
        spec = self.model_spec
        if spec.get("onnx"):
            return Path(spec["onnx"]["path"])  # an ONNX model's "config" is its graph
        if spec.get("ultralytics"):
            return Path(self.onnx_contract.path)  # the graph Ultralytics exported in this cell
        return Path(spec["config"]) if spec.get("config") else packaged_config(spec["name"])

    @property
    def is_onnx_source(self) -> bool:
        return bool(self.model_spec.get("onnx") or self.model_spec.get("ultralytics"))

    @cached_property
    def onnx_contract(self):
        """The resolved contract of an ``onnx:`` model (sniffed again here: the same answer as plan);
        an ``ultralytics:`` model is exported first (stage ``export``) by Ultralytics' exporter."""
        from harness.models.onnx_source import resolve

        spec = self.model_spec
        if spec.get("ultralytics"):
            from harness.models import ultralytics_source as us

            self.stage("export")
            path, self.export_facts = us.export(spec["ultralytics"], self.cell["imgsz"], self.cache_dir)
            block = us.onnx_block(spec["ultralytics"], path, self.export_facts["ultralytics"]["names"])
            return resolve(block, f"models[{spec['name']}].ultralytics")
        return resolve(spec["onnx"], f"models[{spec['name']}].onnx")

    @cached_property
    def cfg(self):
        from harness.models.mmyolo_build import load_config, prepare_mm

        prepare_mm()
        return load_config(self.config_path, self.cell["imgsz"])

    @cached_property
    def box_type(self) -> str:
        """``rotated`` or ``horizontal``: the model's boxes (its config's head), which must be the
        dataset's (checked at plan time; again here for cells built without a plan)."""
        from harness.data.datasets import box_type
        from harness.models.box_types import HORIZONTAL, config_box_type

        kind, why = (HORIZONTAL, "an onnx:/ultralytics: model") if self.is_onnx_source else \
            config_box_type(self.cfg)
        data = box_type(self.dataset.ann_file)
        if data != kind:
            raise UserError(f"model '{self.model_spec['name']}' predicts {kind} boxes ({why}) but "
                            f"dataset '{self.dataset.ann_file}' holds {data} boxes: pair a rotated "
                            "model with a rotated dataset and a horizontal one with a horizontal one")
        return kind

    @cached_property
    def dataset(self) -> CocoDataset:
        ds = self.cell["dataset"]
        return CocoDataset.load(ds["images"], ds["annotations"], ds.get("limit"))

    def build_model(self, device: str):
        from harness.models.mmyolo_build import build_model

        spec = self.model_spec
        return build_model(self.cfg, spec["checkpoint"], device=device,
                           trust_checkpoint=spec.get("trust_checkpoint", False))

    def preprocessor(self, device: str):
        if self.is_onnx_source:
            from harness.models.onnx_preprocess import OnnxPreprocessor

            return OnnxPreprocessor(self.onnx_contract, self.cell["imgsz"], device)
        from harness.models.preprocess import Preprocessor

        return Preprocessor(self.cfg, device)

    def input_cache(self, pre):
        """The preprocessed-input cache entry of this dataset, preprocessing and size (None: off).

        ``DETBENCH_INPUT_CACHE=0`` turns it off (every cell decodes its images).
        """
        import os

        if os.environ.get("DETBENCH_INPUT_CACHE", "1") == "0":
            return None
        from harness.data.input_cache import InputCache, cache_key, dataset_hash

        ds = self.dataset
        data = dataset_hash(ds.ann_file, [im.path for im in ds.images],
                            memo_dir=self.cache_dir / "inputs")
        key = cache_key(data, pre.pipeline_hash(), self.cell["imgsz"])
        return InputCache(self.cache_dir, key)

    def mm_test_cfg(self, base) -> "object":
        """The model's test_cfg with the matrix's eval settings applied (None keeps the config's)."""
        cfg = copy.deepcopy(base)
        ev = self.cell["eval"]
        if ev.get("score_thr") is not None:
            cfg.score_thr = ev["score_thr"]
        if ev.get("iou_thr") is not None:
            cfg.nms.iou_threshold = ev["iou_thr"]
        if ev.get("pre_topk") is not None:
            cfg.nms_pre = ev["pre_topk"]
        if ev.get("keep_topk") is not None:
            cfg.max_per_img = ev["keep_topk"]
        return cfg

    def onnx_test_cfg(self) -> dict:
        """Host NMS settings of an ONNX model: mmyolo's YOLOv8 test_cfg, the matrix's eval on top."""
        from mmengine.config import ConfigDict

        base = ConfigDict(multi_label=True, nms_pre=30000, score_thr=0.001,
                          nms=dict(type="nms", iou_threshold=0.7), max_per_img=300)
        return self.mm_test_cfg(base)

    def effective_eval(self) -> dict:
        """The settings actually used, recorded with the cell so results are interpretable."""
        cfg = self.mm_test_cfg(self.cfg.model.test_cfg) if not self.is_onnx_source else self.onnx_test_cfg()
        return {"score_thr": cfg.get("score_thr"), "iou_thr": cfg.nms.iou_threshold,
                "pre_topk": cfg.get("nms_pre", -1), "keep_topk": cfg.get("max_per_img"),
                "multi_label": cfg.get("multi_label", False),
                "yolox_style": cfg.get("yolox_style", False)}

    def calibration_set(self):
        """The cell's calibration data, preprocessed exactly like its inference inputs."""
        from harness.calibration.data import build_calibration_set, calibration_images

        files, source = calibration_images(self.cell, self.cache_dir)
        wanted = int(self.cell["calibration"]["images"])
        if 0 < len(files) < wanted:  # a warning, not an error: calibrating on fewer images is valid
            self.notes.append(f"calibration.images asks for {wanted} images but {source} has only "
                              f"{len(files)}: calibrated on {len(files)}")
        return build_calibration_set(files, self.preprocessor("cpu"), 8, source)

    def same_scales_warning(self, info: dict) -> list[str]:
        """Warn when a histogram method chose exactly the min/max scales (a silent no-op)."""
        if info["calibration_method"] == "minmax":
            return []
        folder = Path(info["calibration_cache"]).parent
        from harness.calibration.qdq import scales_hash

        for other in folder.glob("*.calib.json"):
            if other.name == Path(info["calibration_cache"]).name:
                continue
            try:
                if "CalibrationMethod.MinMax" in other.read_text()[-400:] and scales_hash(other) == info["scales_sha256"]:
                    return [f"calibration method {info['calibration_method']} produced the same scales "
                            "as minmax: the method had no effect"]
            except (OSError, ValueError):
                continue
        return []
