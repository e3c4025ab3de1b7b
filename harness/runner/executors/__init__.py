"""Where a run's cells execute.

``local`` (the default, ``executor=None`` in :func:`harness.runner.orchestrator.execute`):
one worker subprocess after another on this machine.  ``ray``
(:class:`~harness.runner.executors.ray_executor.RayExecutor`): each cell one Ray
task on a cluster, the driver storing every result.  Ray is imported only when
the Ray executor is used.
"""
from __future__ import annotations

from typing import Optional

EXECUTORS = ("local", "ray")


def make(name: str, *, address: Optional[str] = None, cpus_per_cell: float = 1.0):
    """The executor called ``name`` (None for local), connected and ready; UserError if not."""
    from harness.errors import UserError

    if name == "local":
        if address:
            raise UserError(f"--address {address} is for --executor ray (the local executor "
                            "runs cells on this machine)")
        return None
    if name != "ray":
        raise UserError(f"--executor {name!r}: expected one of {', '.join(EXECUTORS)}")
    from harness.runner.executors.ray_executor import RayExecutor

    executor = RayExecutor(address=address, cpus_per_cell=cpus_per_cell)
    executor.connect()
    return executor
