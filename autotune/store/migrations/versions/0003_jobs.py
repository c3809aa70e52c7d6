"""job queue and workers (the tuning daemon)

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    op.create_table(
        "autotune_jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model", sa.String(500), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("hardware", sa.JSON, nullable=False),
        sa.Column("study_name", sa.String(300), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("trials_planned", sa.Integer, nullable=False),
        sa.Column("submitted_from", sa.String(200), nullable=False),
        sa.Column("best_measurement_id", sa.Integer, sa.ForeignKey("autotune_measurements.id"), nullable=True),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "autotune_workers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("hardware_key", sa.String(32), nullable=False),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("autotune_jobs.id"), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("current", sa.Text, nullable=True),
        sa.Column("trials_done", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
    )


def downgrade():
    op.drop_table("autotune_workers")
    op.drop_table("autotune_jobs")
