"""Opening the tuning database: URL handling, schema checks, and the one unit-of-work helper
that owns commit / rollback / close and turns driver errors into :class:`StoreError`."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import StoreError, UsageError
from ..paths import data_dir

ENV_DB = "AUTOTUNE_DB"
SCHEMA_LOCK_ID = 0x6175746F74756E  # "autotun": one advisory lock for schema creation
#: Optuna's own tables, which share the database with ours
OPTUNA_TABLES = {"studies", "study_directions", "study_user_attributes", "study_system_attributes", "trials",
                 "trial_params", "trial_values", "trial_intermediate_values", "trial_user_attributes",
                 "trial_system_attributes", "trial_heartbeats", "version_info", "alembic_version"}
VERSION_TABLE = "autotune_alembic_version"


def default_url() -> str:
    return os.environ.get(ENV_DB) or f"sqlite:///{data_dir() / 'autotune.db'}"


def safe_url(url: str | URL) -> str:
    """The URL with any password hidden: the only form that ever reaches output or errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def _short(exc: Exception, url: str) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return text


def _alembic_config(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


class Store:
    """The tuning database. ``Store(url)`` opens it (creating the schema on an empty database) and
    refuses one whose schema is older than this autotune with the hint to upgrade."""

    def __init__(self, url: str | None = None, *, upgrade: bool = False):
        self.url = url or default_url()
        self.display_url = safe_url(self.url)
        try:
            parsed = make_url(self.url)
        except ArgumentError:
            raise UsageError(f"--db {self.url!r} is not a database URL (e.g. sqlite:///tune.db or "
                             "postgresql+psycopg://user@host/db)") from None
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            self._check_sqlite_file(Path(parsed.database.removeprefix("file:").split("?")[0]))
        try:
            # a server that went away answers "refused" at once; one cut off by the network would
            # keep a connect waiting for minutes: give up after 10 s (the daemon retries with backoff)
            args = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
            self.engine = create_engine(self.url, pool_pre_ping=True, connect_args=args)
        except ImportError as exc:
            hint = " (pip install 'autotune[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
            raise StoreError(f"cannot use database {self.display_url}: {exc}{hint}") from None
        except (ArgumentError, SQLAlchemyError) as exc:
            raise StoreError(f"cannot use database {self.display_url}: {_short(exc, self.url)}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._optuna = None
        self._prepare(upgrade)

    def _check_sqlite_file(self, path: Path) -> None:
        if path == data_dir() / "autotune.db":
            path.parent.mkdir(parents=True, exist_ok=True)
        if not path.parent.is_dir():
            raise StoreError(f"database directory {path.parent} does not exist")
        if path.is_dir():
            raise StoreError(f"{path} is a directory, not a SQLite database")
        if path.exists() and path.stat().st_size:
            try:
                with open(path, "rb") as f:
                    header = f.read(16)
            except OSError as exc:
                raise StoreError(f"cannot read {path}: {exc.strerror}") from None
            if header != b"SQLite format 3\x00":
                raise StoreError(f"{path} is not a SQLite database; refusing to touch it")

    def revision(self) -> str | None:
        with self._errors():
            with self.engine.connect() as conn:
                if not inspect(conn).has_table(VERSION_TABLE):
                    return None
                return conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalar()

    def _prepare(self, upgrade: bool) -> None:
        head = head_revision()
        if self.revision() == head:
            return
        with self.schema_lock():  # another process may be creating the same schema right now
            current = self.revision()
            if current == head:
                return
            if current is None and not upgrade:
                self._refuse_foreign_tables()
            if current is not None and not upgrade:
                raise StoreError(f"the tuning database {self.display_url} has schema {current}, this autotune "
                                 f"needs {head}: run `autotune db upgrade` (with the same --db)")
            self.upgrade()

    def _refuse_foreign_tables(self) -> None:
        """A database holding another application's tables is not ours to add a schema to."""
        with self._errors(), self.engine.connect() as conn:
            foreign = sorted(t for t in inspect(conn).get_table_names()
                             if not t.startswith("autotune_") and t not in OPTUNA_TABLES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise StoreError(f"{self.display_url} holds other tables ({shown}): not an autotune database; "
                             "refusing to touch it (`autotune db upgrade` adds autotune's tables anyway)")

    @contextlib.contextmanager
    def schema_lock(self):
        """Serialise schema creation and migration (ours and Optuna's) across processes: a
        PostgreSQL advisory lock, or an exclusive lock on a file beside a SQLite database. Without
        it, two searches started at once on a fresh database both create the tables, and one fails."""
        if self.engine.dialect.name == "postgresql":
            with self._errors(), self.engine.connect() as conn:
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({SCHEMA_LOCK_ID})")
                try:
                    yield
                finally:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({SCHEMA_LOCK_ID})")
            return
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
            yield
            return
        try:
            handle = open(database.removeprefix("file:").split("?")[0] + ".schema-lock", "a")
        except OSError:  # a read-only place: nobody can create a schema there anyway
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def upgrade(self) -> None:
        """Apply our migrations up to head, in one transaction."""
        from alembic import command

        with self._errors():
            with self.engine.begin() as conn:
                command.upgrade(_alembic_config(conn), "head")

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self.display_url}: {_short(exc, self.url)}") from None

    @contextlib.contextmanager
    def session(self):
        """One unit of work: commits on success, rolls back on any error, always closes."""
        with self._errors():
            s: Session = self._sessions()
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise
            finally:
                s.close()

    def optuna_storage(self, heartbeat_interval: int | None = None, grace_period: int | None = None):
        """Optuna's RDB storage on the same database (its tables are not prefixed, ours are).
        With a heartbeat, a trial whose worker stopped beating is failed after the grace period
        and retried (enqueued again) by whichever worker notices first."""
        import optuna

        if heartbeat_interval is None and self._optuna is not None:
            return self._optuna
        callback = optuna.storages.RetryFailedTrialCallback(max_retry=3) if heartbeat_interval else None
        with self._errors(), self.schema_lock():  # Optuna creates its tables on first use
            storage = optuna.storages.RDBStorage(self.url, heartbeat_interval=heartbeat_interval,
                                                 grace_period=grace_period, failed_trial_callback=callback)
        if heartbeat_interval is None:
            self._optuna = storage
        return storage
