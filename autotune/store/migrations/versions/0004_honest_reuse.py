"""config-only as a column (not a name suffix), reuse keys and trial limits on measurements, the
baseline a study's ratios are computed against

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

SUFFIX = " [config-only]"


def upgrade():
    models = sa.table("autotune_models", sa.column("id", sa.Integer), sa.column("name", sa.String))
    conn = op.get_bind()
    for row in conn.execute(sa.select(models.c.id, models.c.name).where(models.c.name.like(f"%{SUFFIX}"))):
        conn.execute(models.update().where(models.c.id == row.id).values(name=row.name[:-len(SUFFIX)]))
    # SQLite's unique constraint from 0001 has no name: the naming convention gives it one to drop
    name = _unique_name(conn, "autotune_models", ["name"]) or "uq_autotune_models_name"
    with op.batch_alter_table("autotune_models", naming_convention={"uq": "uq_%(table_name)s_%(column_0_name)s"}) as batch:
        batch.drop_constraint(name, type_="unique")
        batch.create_unique_constraint("uq_autotune_models_name_config_only", ["name", "config_only"])
    with op.batch_alter_table("autotune_measurements") as batch:
        batch.add_column(sa.Column("reuse_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("trial_limit_s", sa.Float, nullable=True))
        batch.create_index("ix_autotune_measurements_reuse_key", ["reuse_key"])
    with op.batch_alter_table("autotune_studies") as batch:
        batch.add_column(sa.Column("baseline_measurement_id", sa.Integer, nullable=True))


def _unique_name(conn, table: str, columns: list[str]) -> str | None:
    for uc in sa.inspect(conn).get_unique_constraints(table):
        if uc["column_names"] == columns:
            return uc["name"]
    return None


def downgrade():
    with op.batch_alter_table("autotune_studies") as batch:
        batch.drop_column("baseline_measurement_id")
    with op.batch_alter_table("autotune_measurements") as batch:
        batch.drop_index("ix_autotune_measurements_reuse_key")
        batch.drop_column("trial_limit_s")
        batch.drop_column("reuse_key")
