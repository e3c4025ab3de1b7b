"""Alembic migrations of the store, shipped as package data (no alembic.ini).

``harness.store.migrate`` drives Alembic from code with ``script_location`` set
to this directory.  To add a revision after changing ``schema.py``::

    python -c "from harness.store import migrate; migrate.new_revision('sqlite:///dev.db', '0002', 'what changed')"

then review the generated file (autogenerate misses some changes).  Revision
ids are zero-padded sequence numbers, so file names sort in upgrade order.
"""
import os

SCRIPT_LOCATION = os.path.dirname(os.path.abspath(__file__))
