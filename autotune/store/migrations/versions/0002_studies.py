"""studies (budget, objective, chosen recipe) and stale marks on measurements

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.create_table(
        "autotune_studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(300), nullable=False, unique=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("autotune_models.id"), nullable=False),
        sa.Column("target_id", sa.Integer, sa.ForeignKey("autotune_targets.id"), nullable=False),
        sa.Column("workload_id", sa.Integer, sa.ForeignKey("autotune_workloads.id"), nullable=False),
        sa.Column("budget", sa.Text, nullable=False),
        sa.Column("objective", sa.String(100), nullable=False),
        sa.Column("best_measurement_id", sa.Integer, sa.ForeignKey("autotune_measurements.id"), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    with op.batch_alter_table("autotune_measurements") as batch:
        batch.add_column(sa.Column("stale", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade():
    with op.batch_alter_table("autotune_measurements") as batch:
        batch.drop_column("stale")
    op.drop_table("autotune_studies")
