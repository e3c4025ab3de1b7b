"""Geometry helpers (leaf package: imports nothing from harness).

``harness.geometry.rotated`` holds rotated-box conversions, exact rotated IoU and
rotated NMS in plain torch.  It is not imported here so that ``import harness``
(and ``import harness.geometry``) stays free of torch.
"""
