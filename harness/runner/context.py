"""What a cell's worker knows: its settings, model config, dataset and cache."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from harness.data.coco import CocoDataset
from harness.models.table import packaged_config


@dataclass
class CellContext:
    cell: dict
    work_dir: Path
    cache_dir: Path
    notes: list = field(default_factory=list)
    stages: object = None  # the worker's stage tracker: runners report export/build through it

    def stage(self, name: str) -> None:
        if self.stages is not None:
            self.stages.enter(name)

    @property
    def model_spec(self) -> dict:
        return self.cell["model_spec"]

    @property
    def config_path(self) -> Path:
        spec = self.model_spec
        return Path(spec["config"]) if spec.get("config") else packaged_config(spec["name"])

    @cached_property
    def cfg(self):
        from harness.models.mmyolo_build import load_config, prepare_mm

        prepare_mm()
        return load_config(self.config_path, self.cell["imgsz"])

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

    def effective_eval(self) -> dict:
        """The settings actually used, recorded with the cell so results are interpretable."""
        cfg = self.mm_test_cfg(self.cfg.model.test_cfg)
        return {"score_thr": cfg.get("score_thr"), "iou_thr": cfg.nms.iou_threshold,
                "pre_topk": cfg.get("nms_pre", -1), "keep_topk": cfg.get("max_per_img"),
                "multi_label": cfg.get("multi_label", False),
                "yolox_style": cfg.get("yolox_style", False)}

    def calibration_set(self):
        """The cell's calibration data, preprocessed exactly like its inference inputs."""
        from harness.calibration.data import build_calibration_set, calibration_images

        files, source = calibration_images(self.cell, self.cache_dir)
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
