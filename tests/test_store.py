"""The tuning database on real SQLite files: migrations, old databases, bad databases, units of work."""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from autotune.cli import cli
from autotune.errors import StoreError, UsageError
from autotune.store import Store, safe_url
from autotune.store import tables as m
from autotune.store.db import head_revision

OLD_DB = Path(__file__).parent / "data" / "autotune-0001.db"


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_fresh_database_gets_our_schema_beside_optunas(db_url, tmp_path):
    store = Store(db_url)
    assert store.revision() == head_revision()
    store.optuna_storage()
    names = {r[0] for r in sqlite3.connect(tmp_path / "tune.db").execute("select name from sqlite_master")}
    assert {"autotune_measurements", "autotune_studies", "autotune_alembic_version"} <= names
    assert {"trials", "alembic_version"} <= names  # optuna's own, untouched by our migrations
    Store(db_url)  # opening again is a no-op


def test_default_database_lives_in_the_user_data_dir():
    store = Store()
    assert store.url.endswith("data/autotune.db")
    assert Path(store.url.removeprefix("sqlite:///")).exists()


def test_older_database_is_refused_then_upgraded(tmp_path):
    db = tmp_path / "old.db"
    shutil.copy(OLD_DB, db)
    before = digest(db)
    with pytest.raises(StoreError, match="run `autotune db upgrade`"):
        Store(f"sqlite:///{db}")
    assert digest(db) == before  # refused means untouched
    result = CliRunner().invoke(cli, ["db", "upgrade", "--db", f"sqlite:///{db}"])
    assert result.exit_code == 0, result.output
    store = Store(f"sqlite:///{db}")
    with store.session() as s:
        row = s.get(m.Measurement, 1)
        assert row.tokens_per_s == 31.0 and row.stale is False  # old rows kept, new column defaulted
        assert s.query(m.Study).count() == 0


def test_non_database_file_is_never_overwritten(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("my precious notes\n")
    result = CliRunner().invoke(cli, ["recipes", "--db", f"sqlite:///{f}"])
    assert result.exit_code == 1
    assert "not a SQLite database" in result.output and "Traceback" not in result.output
    assert f.read_text() == "my precious notes\n"


def test_read_only_database_fails_cleanly(tmp_path, db_url):
    Store(db_url)
    path = tmp_path / "tune.db"
    before = digest(path)
    os.chmod(path, 0o444)
    try:
        if os.access(path, os.W_OK):
            pytest.skip("running as a user that can write read-only files")
        store = Store(db_url)
        with pytest.raises(StoreError, match="readonly"):
            with store.session() as s:
                s.add(m.Model(name="x", config_only=False))
    finally:
        os.chmod(path, 0o644)
    assert digest(path) == before


def test_read_only_database_as_root_by_directory(tmp_path):
    """Root ignores file modes; a database on a read-only mount is the real-world case. Simulate
    with SQLite's own read-only mode, which the driver enforces for every user."""
    db = tmp_path / "ro.db"
    Store(f"sqlite:///{db}")
    before = digest(db)
    store = Store(f"sqlite:///file:{db}?mode=ro&uri=true")
    with pytest.raises(StoreError, match="readonly"):
        with store.session() as s:
            s.add(m.Model(name="x", config_only=False))
    assert digest(db) == before


def test_unit_of_work_rolls_back_everything(db_url):
    store = Store(db_url)
    with pytest.raises(RuntimeError):
        with store.session() as s:
            s.add(m.Model(name="half", config_only=False))
            s.flush()
            raise RuntimeError("boom mid-write")
    with store.session() as s:
        assert s.query(m.Model).count() == 0


def test_unreachable_database_hides_the_password():
    url = "postgresql+psycopg://tuner:s3cret-pw@127.0.0.1:1/autotune"
    with pytest.raises(StoreError) as info:
        Store(url)
    assert "s3cret-pw" not in str(info.value)
    assert "***" in str(info.value)
    assert "s3cret-pw" not in safe_url(url)


def test_not_a_url():
    with pytest.raises(UsageError, match="not a database URL"):
        Store("this is not a url")
    result = CliRunner().invoke(cli, ["recipes", "--db", "nonsense"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_missing_directory(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store(f"sqlite:///{tmp_path}/nope/tune.db")
