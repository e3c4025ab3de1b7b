"""acks: acknowledged changes of a cell's series (``detbench ack``)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

One new table; existing results are untouched.
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("cell_key", sa.String(255), nullable=False),
        sa.Column("series", sa.String(64), nullable=False),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("author", sa.String(255), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE",
                                name="fk_acks_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_acks"),
    )
    op.create_index("ix_acks_series", "acks", ["series"])


def downgrade() -> None:
    op.drop_index("ix_acks_series", table_name="acks")
    op.drop_table("acks")
