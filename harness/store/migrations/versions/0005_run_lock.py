"""runs.lock_*: the run-level lock held by the process executing a run

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-01

Four nullable columns: who holds the run (host, pid, a random token) and when
it last said it was alive.  All NULL = nobody executes the run; existing runs
upgrade unlocked.
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("lock_token", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lock_host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("lock_pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("lock_heartbeat_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        for name in ("lock_heartbeat_at", "lock_pid", "lock_host", "lock_token"):
            batch.drop_column(name)
