"""Schema revisions: Alembic driven from code, so the migrations ship inside the package
and work from any working directory, with no alembic.ini."""
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from harness.errors import UserError
from harness.store import migrations
from harness.store.engine import database_exists, migration_lock, open_engine, user_errors


def alembic_config(connection: Connection | None = None) -> Config:
    """A Config pointing at the packaged migrations; env.py runs on ``connection``."""
    config = Config()
    # ConfigParser interpolation would eat a '%' in the path
    config.set_main_option("script_location", migrations.SCRIPT_LOCATION.replace("%", "%%"))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision this code's models correspond to."""
    head = _scripts().get_current_head()
    assert head is not None, "the packaged migrations have no head"
    return head


def current_revision(url: str) -> str | None:
    """The database's revision; None for a missing or never-migrated one (never creates a file)."""
    if not database_exists(url):
        return None
    engine = open_engine(url, create=False, readonly=True)
    try:
        with user_errors(url), engine.connect() as conn:
            return _revision(conn)
    finally:
        engine.dispose()


def upgrade(url: str) -> str:
    """Bring ``url`` to the head revision, creating the database if needed; returns the head."""
    engine = open_engine(url, create=True, readonly=False)
    try:
        with user_errors(url), engine.begin() as conn:
            migration_lock(conn)
            if _has_tables(conn):
                _require_known(conn, url)
            command.upgrade(alembic_config(conn), "head")
    finally:
        engine.dispose()
    return head_revision()


def prepare(engine: Engine, url: str, *, create: bool) -> None:
    """Make a freshly opened database usable by this code, or explain (UserError) why not."""
    with engine.begin() as conn:
        if create:
            migration_lock(conn)
        if _has_tables(conn):
            _require_head(conn, url)
        elif create:
            command.upgrade(alembic_config(conn), "head")
        else:
            raise UserError(f"database {url} holds no detbench results: run `detbench run` first")


def probe_write(engine: Engine) -> None:
    """Fail now, before any work, if the database can be read but not written.

    A no-op UPDATE, rolled back: SQLite refuses it on a read-only or immutable
    file, a server on a read-only role or replica; nothing is changed.
    """
    with engine.connect() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
        conn.rollback()


def new_revision(url: str, rev_id: str, message: str) -> None:
    """Developer helper: autogenerate a migration from the models against a head-level ``url``."""
    engine = open_engine(url, create=True, readonly=False)
    try:
        with engine.begin() as conn:
            command.revision(alembic_config(conn), message=message, autogenerate=True,
                             rev_id=rev_id)
    finally:
        engine.dispose()


def _has_tables(conn: Connection) -> bool:
    return bool(inspect(conn).get_table_names())


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _require_known(conn: Connection, url: str) -> str:
    """The database's revision, provided this code has a migration script for it."""
    rev = _revision(conn)
    if rev is None:
        raise UserError(f"database {url} has tables but no detbench schema revision: "
                        "it was not created by detbench; use another --db")
    if rev not in {script.revision for script in _scripts().walk_revisions()}:
        raise UserError(f"database {url} is at schema revision {rev}, which this detbench does "
                        "not know: the database was written by a newer detbench; upgrade detbench")
    return rev


def _require_head(conn: Connection, url: str) -> None:
    rev, head = _require_known(conn, url), head_revision()
    if rev != head:
        raise UserError(f"database {url} is at schema revision {rev}, behind {head}: "
                        f"run `detbench db upgrade --db {url}`")
