"""models, targets, workloads, recipes, measurements

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "autotune_models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(500), nullable=False, unique=True),
        sa.Column("config_only", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "autotune_targets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("hardware_key", sa.String(32), nullable=False, index=True),
        sa.Column("versions_key", sa.String(32), nullable=False),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("hardware_key", "versions_key"),
    )
    op.create_table(
        "autotune_workloads",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(32), nullable=False, unique=True),
        sa.Column("spec", sa.JSON, nullable=False),
    )
    op.create_table(
        "autotune_recipes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("recipe", sa.JSON, nullable=False),
    )
    op.create_table(
        "autotune_measurements",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("autotune_models.id"), nullable=False, index=True),
        sa.Column("target_id", sa.Integer, sa.ForeignKey("autotune_targets.id"), nullable=False, index=True),
        sa.Column("workload_id", sa.Integer, sa.ForeignKey("autotune_workloads.id"), nullable=False),
        sa.Column("recipe_id", sa.Integer, sa.ForeignKey("autotune_recipes.id"), nullable=False),
        sa.Column("study", sa.String(300), nullable=True, index=True),
        sa.Column("is_baseline", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("tpot_ms_p50", sa.Float, nullable=True),
        sa.Column("ttft_ms_p50", sa.Float, nullable=True),
        sa.Column("tokens_per_s", sa.Float, nullable=True),
        sa.Column("peak_memory_bytes", sa.Float, nullable=True),
        sa.Column("quality", sa.Float, nullable=True),
        sa.Column("figures", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


def downgrade():
    for table in ("autotune_measurements", "autotune_recipes", "autotune_workloads", "autotune_targets",
                  "autotune_models"):
        op.drop_table(table)
