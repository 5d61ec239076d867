"""Where a study lives: Optuna's RDB storage, a SQLite file in the output directory by default, or
any database URL Optuna accepts (PostgreSQL to share one study between machines).

SQLite with several processes. Optuna claims a queued trial, and fails a dead one, by reading its
state and writing a new one. Python's sqlite3 runs the read outside any transaction, so two
processes can both read WAITING and both claim the same trial (Optuna's issue #4002). Here every
transaction on a SQLite storage starts with `BEGIN IMMEDIATE`: it takes the database's write lock
first, so read-then-write is atomic and the other processes wait (up to SQLITE_TIMEOUT s) instead of
failing. PostgreSQL needs nothing of the kind: Optuna reads the row `FOR UPDATE`.

Heartbeats. A process that runs a trial records a heartbeat every HEARTBEAT_S seconds; a trial whose
heartbeat is older than GRACE_S is failed and queued again by whoever notices first (Optuna's
`fail_stale_trials`). That is how a trial of a machine that died is recovered; a dead process on
*this* machine is noticed at once (study/liveness.py).

A full disk. SQLite refuses a write it cannot make (its journal or the database cannot grow, the
file is read-only) with its own error, which SQLAlchemy wraps and Optuna wraps again (and retries):
for a SQLite storage, such an error is the WriteError of its file (rnn_train.files), one line naming
the database, wherever Optuna meets it. SQLite's atomic commit leaves the database as it was before
the transaction that failed.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shlex
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from rnn_train.errors import UserError
from rnn_train.files import WriteError

HEARTBEAT_S = 20
GRACE_S = 90
SQLITE_TIMEOUT = 120.0
DEFAULT_DB = "study.db"
_REFUSED_WRITES = {"SQLITE_FULL": errno.ENOSPC, "SQLITE_READONLY": errno.EROFS, "SQLITE_IOERR_WRITE": errno.EIO,
                   "SQLITE_IOERR_FSYNC": errno.EIO, "SQLITE_IOERR_DIR_FSYNC": errno.EIO,
                   "SQLITE_IOERR_TRUNCATE": errno.EIO, "SQLITE_IOERR_DELETE": errno.EIO}
"""SQLite's errors for a write that the file system refused (the extended names from Python 3.11 on)."""
_REFUSED_MESSAGES = {"database or disk is full": errno.ENOSPC, "attempt to write a readonly database": errno.EROFS,
                     "disk I/O error": errno.EIO}
"""The same, by SQLite's message (Python 3.10 has no error names; an I/O error may be a read's there)."""


def quiet_optuna() -> None:
    """Optuna's INFO lines ('Trial 3 finished ...') repeat what our log says; its experimental-API
    warnings (heartbeats, matplotlib plots) are not the user's business."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # we run the heartbeat ourselves (study/engine.py), with ask and tell rather than Study.optimize
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def default_url(out: Path) -> str:
    """The SQLite file in --out as a URL (sqlite_url)."""
    return sqlite_url(out / DEFAULT_DB)


def sqlite_url(path: Path) -> str:
    """A SQLite file as a URL of its absolute path: the path's %, ? and # escaped, which SQLAlchemy
    would read as an escape, a query (a 'q?x' --out put the database in ./q) and a fragment."""
    return "sqlite:///" + str(path.resolve()).replace("%", "%25").replace("?", "%3F").replace("#", "%23")


def absolute(url: str) -> str:
    """A --storage URL with a relative SQLite path (sqlite:///study.db) made absolute, as the
    study's files record it (sweep.json, the dashboard command) and a later --resume from another
    directory must find it; any other URL as given."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
        sqlite = u.get_backend_name() == "sqlite"
    except Exception:  # noqa: BLE001 - check_url reports an unparsable URL
        return url
    db = u.database
    if not sqlite or not db or db == ":memory:" or db.startswith("file:") or os.path.isabs(db) or u.query:
        return url
    return sqlite_url(Path(db))


def shown(url: str) -> str:
    """The URL with its password hidden, for messages and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as the user typed it
        return url


_POSTGRES_DRIVERS = ("psycopg2", "psycopg")
"""PostgreSQL drivers a URL without one may take, in this order: requirements.txt installs psycopg2."""


def with_driver(url: str) -> str:
    """`postgresql://...` (no driver named) as `postgresql+DRIVER://...` for a driver that is installed.

    Why: SQLAlchemy picks the driver of a bare URL itself, and 2.1 changed its pick from psycopg2 to
    psycopg (version 3), so the URL form the docs give failed with "driver not installed" where
    psycopg2 was. A URL that names its driver, or another database, is left as it is."""
    import importlib.util

    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001 - check_url reports an unparsable URL
        return url
    if u.drivername != "postgresql":
        return url
    for driver in _POSTGRES_DRIVERS:
        if importlib.util.find_spec(driver) is not None:
            return u.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    return url


def dashboard_command(url: str) -> str:
    return f"optuna-dashboard {shlex.quote(shown(url))}"


def check_url(url: str) -> str | None:
    """What open_storage refuses before it connects (an unparsable URL, an in-memory SQLite database,
    a SQLite file in a directory that is not there), as one UserError; -> the SQLite file, or None
    for other databases. --dry-run calls it alone."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
        backend = u.get_backend_name()
    except Exception as e:  # noqa: BLE001 - sqlalchemy's ArgumentError and friends
        raise UserError(f"--storage {url!r} is not a database URL ({e})") from None
    try:  # a database kind SQLAlchemy knows (foo:// parses): no connection, no driver loaded
        u.get_dialect()
    except Exception as e:  # noqa: BLE001 - NoSuchModuleError: what the real run says, password hidden
        raise UserError(f"cannot open the study storage {shown(url)}: {_first_line(e)}") from None
    if backend != "sqlite":
        return None
    if not u.database or u.database == ":memory:":  # each process (each --workers worker) would get its own
        raise UserError(f"--storage {shown(url)} is an in-memory SQLite database, which no other process sees "
                        f"and which ends with this one: give a file (sqlite:///PATH) or leave --storage out")
    parent = Path(u.database).parent
    if not parent.is_dir():
        what = "is a file, not a directory" if parent.exists() else "does not exist"
        raise UserError(f"--storage {shown(url)}: the directory {parent} {what}")
    return u.database


def open_storage(url: str, *, retry: Callable | None = None, heartbeat_s: int = HEARTBEAT_S,
                 grace_s: int = GRACE_S):
    """An RDBStorage for `url` with heartbeats; `retry(study, frozen_trial)` queues a stale trial again.
    Any failure to open it (bad URL, missing driver, unreachable server) is one UserError."""
    import optuna
    import sqlalchemy
    from sqlalchemy import event

    quiet_optuna()
    kwargs: dict[str, Any] = {}
    path = check_url(url)
    if path is not None:
        def connect() -> sqlite3.Connection:
            # isolation_level=None: sqlite3 opens no transactions itself; the "begin" hook below does
            return sqlite3.connect(path, timeout=SQLITE_TIMEOUT, isolation_level=None, check_same_thread=False)
        kwargs["creator"] = connect
    for attempt in range(6):
        try:
            with _refusals(path):  # a new database's tables, on a full disk
                storage = optuna.storages.RDBStorage(with_driver(url), engine_kwargs=kwargs, heartbeat_interval=heartbeat_s,
                                                     grace_period=grace_s, heartbeat_stale_trial_callback=retry)
            break
        except WriteError:
            raise
        except (ImportError, ModuleNotFoundError) as e:
            raise UserError(f"--storage {shown(url)}: its database driver is not installed ({e})") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # Two processes creating the tables of an empty database at once (the same command
            # started on two machines): one of them loses; the tables are there when it tries again.
            if attempt == 5:
                raise UserError(f"cannot open the study storage {shown(url)}: {_first_line(e)}") from None
            time.sleep(0.2 + random.random())
        except (sqlalchemy.exc.SQLAlchemyError, ValueError, OSError) as e:
            raise UserError(f"cannot open the study storage {shown(url)}: {_first_line(e)}") from None
    if path is not None:
        @event.listens_for(storage.engine, "begin")
        def _immediate(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(storage.engine, "handle_error")
        def _refused(context) -> None:
            error = refused_write(path, context.original_exception)
            if error:
                raise error  # after SQLAlchemy's clean-up, in place of its error: Optuna neither wraps nor retries it
    return storage


@contextlib.contextmanager
def _refusals(database: str | None) -> Iterator[None]:
    """Inside, an error that `refused_write` recognises becomes that WriteError."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - whatever wraps SQLite's error
        refused = database is not None and refused_write(database, e)
        if not refused:
            raise
        raise refused from None


def refused_write(database: str, error: BaseException) -> WriteError | None:
    """The WriteError of the SQLite file `database` if `error`, or an error it was raised from
    (SQLAlchemy's and Optuna's wrap SQLite's), says the file system refused a write; else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, sqlite3.Error):
            name, message = getattr(error, "sqlite_errorname", None), str(error)
            if name and name.startswith("SQLITE_READONLY"):
                name = "SQLITE_READONLY"  # _DBMOVED, _DIRECTORY, ...
            code = _REFUSED_WRITES.get(name) if name else _REFUSED_MESSAGES.get(message)
            return WriteError(database, OSError(code, message)) if code else None
        error = getattr(error, "orig", None) or error.__cause__ or error.__context__
    return None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else e.__class__.__name__


def study_name(kind: str, recipe: str | None, what: dict[str, Any]) -> str:
    """`<kind>-<recipe stem>-<10 hex digits>`: a digest of what decides the trials (the resolved
    recipe and overrides, the space or grid, the budget), never of where the results go, so the same
    command on several machines, each with its own --out, joins one study."""
    stem = Path(recipe).stem if recipe else "defaults"
    return f"{kind}-{stem}-{_digest(what)}"


def made_from(what: dict[str, Any]) -> dict[str, str]:
    """{part: digest} of what decides a study's trials, part by part (the recipe with its overrides,
    the space or grid, the budget, ...): kept with the study, so that a command naming it with
    --study but planning other trials is refused, saying which part differs."""
    return {part: _digest(value) for part, value in what.items()}


def _digest(what: Any) -> str:
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]
