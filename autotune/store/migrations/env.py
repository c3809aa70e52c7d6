"""Alembic environment for autotune's own tables. Runs on the connection the store hands over,
with its own version table so Optuna's alembic history in the same database never collides."""
from __future__ import annotations

from alembic import context

from autotune.store.tables import Base

VERSION_TABLE = "autotune_alembic_version"

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                  include_name=lambda name, type_, parent: type_ != "table" or name.startswith("autotune_"))
with context.begin_transaction():
    context.run_migrations()
