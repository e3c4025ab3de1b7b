"""cells.alignment: the alignment analysis of a cell against its PyTorch fp32 reference

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

One nullable JSON column (the record of ``harness.evaluate.alignment``), so a
database written before it upgrades in place and keeps every result.
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("alignment", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("alignment")
