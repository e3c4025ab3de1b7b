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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (ArgumentError, DatabaseError, DBAPIError, InterfaceError,
                            NoSuchModuleError, OperationalError)
from sqlalchemy.pool import QueuePool

from harness.errors import UserError

BUSY_TIMEOUT_S = 30.0
URL_HINT = "give e.g. sqlite:///results.db or postgresql+psycopg://USER@HOST:5432/DB"
#: how to get each database driver (psycopg 3 comes with detbench's `postgres` extra)
DRIVER_FIX = {"psycopg": "pip install 'detbench[postgres]'",
              "psycopg2": "use postgresql+psycopg://... with pip install 'detbench[postgres]' "
                          "(or install psycopg2)"}
PG_CONNECT_TIMEOUT_S = 10
#: pg_advisory_xact_lock key held while a migration runs (any constant; 'detbench' in ASCII)
PG_MIGRATION_LOCK = 0x6465746265


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise UserError(f"--db {url!r} is not a database URL ({exc}): {URL_HINT}") from None


def shown(url: URL | str) -> str:
    """The URL as messages show it: the password masked."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url


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
    """An engine for ``url``; refuses (UserError) to conjure a SQLite file unless ``create``.

    Connecting is lazy: wrap the first use in :func:`user_errors`.
    """
    parsed = parse_url(url)
    path = sqlite_path(parsed)
    if path is not None and not path.exists():
        if readonly or not create:
            raise UserError(f"database {url} does not exist: run `detbench run` first to create it")
        _make_parent(url, path)
    if parsed.get_backend_name() == "postgresql":
        return _postgres_engine(url, parsed, readonly=readonly)
    if parsed.get_backend_name() != "sqlite":
        return _server_engine(url, parsed)
    if readonly and path is not None:
        engine = create_engine("sqlite://", creator=_readonly_connector(path), poolclass=QueuePool,
                               json_serializer=dumps)
    else:
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S},
                               json_serializer=dumps)
    event.listen(engine, "connect", _pragma_hook(wal=path is not None and not readonly,
                                                 readonly=readonly))
    return engine


def _make_parent(url: str, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"database {url}: cannot create the folder '{path.parent}' "
                        f"({exc.strerror}): give --db a path in a writable folder") from None


def _server_engine(url: str, parsed: URL) -> Engine:
    """An engine for a database server; an unknown scheme or a missing driver is a UserError."""
    try:
        return create_engine(parsed, json_serializer=dumps)
    except NoSuchModuleError:
        raise UserError(f"database {shown(url)}: unknown URL scheme '{parsed.drivername}': "
                        f"{URL_HINT}") from None
    except ImportError as exc:  # the dialect exists but its DBAPI driver is not installed
        driver = (exc.name or parsed.get_driver_name()).split(".")[0]
        fix = DRIVER_FIX.get(driver, f"install the Python driver '{driver}'")
        raise UserError(f"database {shown(url)}: the driver '{driver}' is not installed: {fix}") from None


@contextmanager
def user_errors(url: str, doing: str = "opened") -> Iterator[None]:
    """Turn a database that cannot be reached, opened or written into one UserError line.

    Only connection-level failures (the server, the file, permissions) are translated;
    anything else from SQLAlchemy is a bug and stays loud.
    """
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise UserError(_explain(url, doing, exc)) from None
    except DatabaseError as exc:
        denied = "permission denied" in str(exc.orig).lower() or "read-only" in str(exc.orig).lower()
        if type(exc) is not DatabaseError and not denied:  # other integrity / SQL errors are bugs
            raise
        raise UserError(_explain(url, doing, exc)) from None


def _explain(url: str, doing: str, exc: DBAPIError) -> str:
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    reason = next((line.removeprefix("FATAL:").strip() for line in lines if "FATAL" in line),
                  lines[0] if lines else type(exc.orig).__name__)
    return f"database {shown(url)} cannot be {doing}: {reason}; {_fix(url, reason)}"


def _fix(url: str, reason: str) -> str:
    low = reason.lower()
    path = sqlite_path(parse_url(url))
    if path is not None:
        if path.is_dir():
            return f"'{path}' is a directory: give --db a file path, e.g. sqlite:///{path}/results.db"
        if "readonly" in low or "read-only" in low:
            return f"make '{path}' writable (chmod u+w, chattr -i) or give another --db"
        if "not a database" in low:
            return f"'{path}' is not a SQLite file: give --db a detbench database or a new file path"
        return f"check that '{path}' is a detbench SQLite file in a readable folder"
    if "permission denied" in low or "read-only" in low:
        return "use a role that may create and write tables, or another --db"
    if "does not exist" in low and "database" in low:
        return "create the database (createdb NAME) or fix its name in the --db URL"
    if "connect" in low or "refused" in low or "timeout" in low or "resolve" in low:
        return "check host and port in the --db URL and that the server is running"
    return "check the --db URL, the server and your permissions"


def check_reachable(url: str) -> None:
    """UserError unless a server-backed store answers now; touches nothing (no file, no schema)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return
    open_engine(url, create=False, readonly=True).dispose()


def _postgres_engine(url: str, parsed: URL, *, readonly: bool) -> Engine:
    """A psycopg 3 engine, checked to answer now (UserError naming the server if not)."""
    if parsed.drivername == "postgresql":  # SQLAlchemy's default driver would be psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername != "postgresql+psycopg":
        raise UserError(f"database {shown(url)}: detbench speaks to PostgreSQL through psycopg 3; "
                        f"write the URL as postgresql+psycopg://... and {DRIVER_FIX['psycopg']}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise UserError(f"database {shown(url)}: the driver 'psycopg' is not installed: "
                        f"{DRIVER_FIX['psycopg']}") from None
    connect_args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    if readonly:
        connect_args["options"] = "-c default_transaction_read_only=on"
    engine = create_engine(parsed, connect_args=connect_args, pool_pre_ping=True,
                           json_serializer=dumps)
    event.listen(engine, "before_cursor_execute", _without_nul, retval=True)
    try:
        with engine.connect():
            pass
    except (OperationalError, InterfaceError) as exc:
        engine.dispose()
        raise UserError(_explain(url, "opened", exc)) from None
    return engine


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
