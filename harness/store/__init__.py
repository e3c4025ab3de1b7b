"""Benchmark results storage: the only package in detbench that speaks SQL.

:class:`Store` opens a database (SQLite by default) and checks its schema
revision; :func:`upgrade` migrates one to this code's revision (``detbench db
upgrade``).  Importing this package stays cheap: no torch, no numpy.
"""
from harness.store.api import Store
from harness.store.migrate import current_revision, head_revision, upgrade
from harness.store.records import AckRecord, CellRecord, RunRecord

__all__ = ["AckRecord", "CellRecord", "RunRecord", "Store", "current_revision", "head_revision", "upgrade"]
