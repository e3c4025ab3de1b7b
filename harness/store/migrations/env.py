"""Alembic environment: migrations always run on a connection that harness.store hands over,
so they get the same SQLite pragmas as every other store connection."""
from alembic import context

from harness.store.schema import Base


def _run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through harness.store.upgrade(), "
                           "which supplies the connection")
    # batch mode: SQLite can't ALTER most things, so later migrations copy-and-move tables
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


_run_online()
