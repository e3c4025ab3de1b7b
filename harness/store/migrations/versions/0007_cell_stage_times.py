"""cells.stage_times: wall seconds per stage of a cell's worker

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

One nullable JSON column ({"startup": s, "load": s, "export": s, "build": s,
"infer": s, "eval": s, "measure": s, ...}), so a database written before it
upgrades in place and keeps every result.
"""
from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("stage_times", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("stage_times")
