"""Records go into a JSON column and ``--json`` output: plain Python types, no NaN/inf."""
from __future__ import annotations

import math

import numpy as np


def plain(obj):
    """numpy scalars/arrays → Python, non-finite floats → None, recursively."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj
