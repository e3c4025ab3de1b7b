"""Engines with the connection settings every store connection relies on.

SQLite gets WAL (the dashboard reads while a run writes), foreign keys (off by
default in SQLite, and the cascades depend on them) and a long busy timeout
(runner and dashboard are separate processes contending for the write lock).
A read-only engine opens the file with ``mode=ro`` so that no code path, ours
or SQLAlchemy's, can create or change the database.

PostgreSQL (``postgresql+psycopg://``, the shared store of fleet runs): the
server is asked once at open, so an unreachable one is a one-line user error
before anything happens; connections are pinged before use (a night-long run
outlives idle connections); a read-only engine opens read-only transactions;
and migrations take an advisory lock, so two runs starting on an empty
database do not both create the schema.
"""
import json
import math
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import QueuePool

from harness.errors import UserError

BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 10
#: pg_advisory_xact_lock key held while a migration runs (any constant; 'detbench' in ASCII)
PG_MIGRATION_LOCK = 0x6465746265


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        hint = "expected e.g. sqlite:///results.db"
        raise UserError(f"not a database URL: {url!r} ({hint})") from exc


def sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL; None for other backends and in-memory databases."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def database_exists(url: str) -> bool:
    """False only when we know there is nothing there, i.e. a missing SQLite file."""
    path = sqlite_path(parse_url(url))
    return path is None or path.exists()


def open_engine(url: str, *, create: bool, readonly: bool) -> Engine:
    """An engine for ``url``; refuses (UserError) to conjure a SQLite file unless ``create``."""
    parsed = parse_url(url)
    path = sqlite_path(parsed)
    if path is not None and not path.exists():
        if readonly or not create:
            raise UserError(f"database {url} does not exist: run `detbench run` first to create it")
        path.parent.mkdir(parents=True, exist_ok=True)
    if parsed.get_backend_name() == "postgresql":
        return _postgres_engine(parsed, readonly=readonly)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, json_serializer=dumps)
    if readonly and path is not None:
        engine = create_engine("sqlite://", creator=_readonly_connector(path), poolclass=QueuePool,
                               json_serializer=dumps)
    else:
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S},
                               json_serializer=dumps)
    event.listen(engine, "connect", _pragma_hook(wal=path is not None and not readonly,
                                                 readonly=readonly))
    return engine


def check_reachable(url: str) -> None:
    """UserError unless a server-backed store answers now; touches nothing (no file, no schema)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return
    open_engine(url, create=False, readonly=True).dispose()


def shown(url: URL | str) -> str:
    """A URL as it may appear in messages and logs: the password masked."""
    return (url if isinstance(url, URL) else parse_url(url)).render_as_string(hide_password=True)


def _postgres_engine(url: URL, *, readonly: bool) -> Engine:
    """A psycopg 3 engine, checked to answer now (UserError naming the server if not)."""
    if url.drivername == "postgresql":  # SQLAlchemy's default driver would be psycopg2
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername != "postgresql+psycopg":
        raise UserError(f"database {shown(url)}: detbench speaks to PostgreSQL through psycopg 3; "
                        f"write the URL as postgresql+psycopg://...")
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise UserError(f"database {shown(url)} needs the psycopg package: "
                        "pip install 'detbench[postgres]'") from exc
    connect_args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    if readonly:
        connect_args["options"] = "-c default_transaction_read_only=on"
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True,
                           json_serializer=dumps)
    event.listen(engine, "before_cursor_execute", _without_nul, retval=True)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        engine.dispose()
        raise UserError(f"database {shown(url)} is unreachable ({_first_line(exc.orig or exc)}): "
                        "start PostgreSQL there, create the database, or fix --db") from None
    return engine


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _without_nul(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                 executemany: bool) -> tuple[str, Any]:
    """PostgreSQL text cannot hold NUL, which a crashed worker's log tail may: drop it, don't fail."""
    def clean(params: Any) -> Any:
        if isinstance(params, dict):
            return {k: v.replace("\x00", "") if isinstance(v, str) else v for k, v in params.items()}
        return params

    if isinstance(parameters, (list, tuple)) and parameters and isinstance(parameters[0], dict):
        return statement, [clean(p) for p in parameters]
    return statement, clean(parameters)


def migration_lock(conn: Connection) -> None:
    """Serialise schema creation and upgrades between processes (PostgreSQL; SQLite locks the file)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})


def _readonly_connector(path: Path) -> Any:
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    return lambda: sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)


def _pragma_hook(*, wal: bool, readonly: bool) -> Any:
    pragmas = ["PRAGMA foreign_keys = ON"]
    if wal:
        pragmas.append("PRAGMA journal_mode = WAL")
    if readonly:
        pragmas.append("PRAGMA query_only = ON")

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        cursor.close()

    return on_connect


def dumps(value: Any) -> str:
    """JSON for JSON columns.

    NaN/inf become null (they are not JSON, and browsers choke on them), numpy
    scalars become numbers and paths strings; anything else unserialisable is a
    bug and raises.
    """
    return json.dumps(_finite(value), default=_path_or_raise, allow_nan=False, ensure_ascii=False)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, int, float)):
        value = value.item()  # numpy / torch scalars, without importing either
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _path_or_raise(value: Any) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")
