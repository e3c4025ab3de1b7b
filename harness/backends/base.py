"""What every backend runner provides: one lifecycle, identical inputs and outputs.

A runner is built from a cell, ``load()``-ed once (model build, export,
engine build: each a cached step), then ``forward`` runs the part that is
timed as model time and ``postprocess`` turns its outputs into detections in
original image coordinates.  Preprocessing is shared (harness.models.preprocess)
so every backend sees the same tensor.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable


class SkipCell(Exception):
    """Raised by a runner that finds at run time that it cannot run this cell here."""


@dataclass
class Detections:
    """One image's detections in original pixels, scores, 0-based labels (numpy): boxes (K, 4) xyxy,
    or (K, 5) (cx, cy, w, h, angle in radians, le90) for a rotated model."""

    boxes: Any
    scores: Any
    labels: Any


@dataclass
class RunnerInfo:
    """What a runner reports about itself for provenance (provider, engine hash, ...)."""

    facts: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


class Runner:
    """Base class: subclasses implement ``load``, ``forward``, ``postprocess`` and ``close``."""

    def __init__(self, cell: dict, ctx):
        self.cell = cell
        self.ctx = ctx  # harness.runner.context.CellContext: config, cache, eval settings
        self.info = RunnerInfo()

    def load(self) -> None:
        raise NotImplementedError

    def forward(self, inputs):
        raise NotImplementedError

    def postprocess(self, raw, metas: list[dict]) -> list[Detections]:
        raise NotImplementedError

    def bind_forward(self, inputs) -> Callable[[], Any]:
        """The zero-argument call that is timed as model time.

        Per-call work that is not the model's (input casts, context managers)
        is done here once, so the timed loop body is as bare as a hand-written
        benchmark's; ``timing_context`` wraps the whole loop instead.
        """
        return lambda: self.forward(inputs)

    def timing_context(self):
        return contextlib.nullcontext()

    def decoded(self, prepared):
        """Decoded pre-NMS ``(boxes (N, A, 4) input pixels, scores (N, A, C))`` as numpy, or None.

        The alignment analysis replays NMS on these to attribute every
        difference from the reference; a backend whose graph ends in NMS
        cannot provide them and returns None.
        """
        return None

    def infer(self, prepared) -> list[Detections]:
        """Model + postprocessing of one batch.  The arrays returned belong to the caller: a
        later call must not overwrite them (the accuracy pass converts a batch's detections on
        a helper thread while the next batch runs), so a runner with reused output buffers
        hands out copies."""
        return self.postprocess(self.forward(prepared.inputs), prepared.metas)

    def close(self) -> None:
        pass

    def __enter__(self):
        self.load()
        return self

    def __exit__(self, *exc):
        self.close()
