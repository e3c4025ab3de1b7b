"""Alignment analysis: why a deployed cell's detections differ from the PyTorch fp32 reference.

Pure analysis on arrays and detection sets (no files, no store): the runner's
``harness.runner.compare`` loads each cell's artifacts and stores the result.

* ``detsets``: per-image detection arrays, the one format every comparison uses;
* ``matching``: greedy class-aware IoU matching, class flips;
* ``tensors``: error statistics of the decoded pre-NMS tensors;
* ``settings``: the NMS settings of a cell and the one-at-a-time replay steps;
* ``replay``: counterfactual postprocessing of decoded tensors (host_postprocess);
* ``attribution``: one cause for every missing or extra detection;
* ``batch``: batch invariance of a cell against its batch-1 twin;
* ``lint``: NMS settings that silently change what is measured;
* ``pairing``: which stored cell is a cell's reference or batch twin;
* ``analysis``: everything above assembled into the stored per-cell record;
* ``table``: flat rows of records for the CLI.

Importing this package needs numpy only; torch and mmcv load on the first replay.
"""
from harness.evaluate.alignment.attribution import CAUSES

SCHEMA_VERSION = 1

__all__ = ["CAUSES", "SCHEMA_VERSION"]
