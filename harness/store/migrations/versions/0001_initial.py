"""initial schema: runs, cells, latency_samples, class_ap, telemetry_samples

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Written out column by column rather than via ``metadata.create_all`` so that this
revision stays what it was when later revisions change ``schema.py``.
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _cell_id(table: str) -> sa.Column:
    fk = sa.ForeignKey("cells.id", ondelete="CASCADE", name=f"fk_{table}_cell_id_cells")
    return sa.Column("cell_id", sa.Integer(), fk, nullable=False)


def _pk(table: str, *columns: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(*columns, name=f"pk_{table}")


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("matrix_path", sa.Text(), nullable=True),
        sa.Column("matrix_hash", sa.String(128), nullable=False),
        sa.Column("matrix_yaml", sa.Text(), nullable=False),
        sa.Column("git_sha", sa.String(64), nullable=True),
        sa.Column("detbench_version", sa.String(64), nullable=False),
        sa.Column("environment", sa.JSON(), nullable=False),
        _pk("runs", "id"),
    )
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_table(
        "cells",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(32),
                  sa.ForeignKey("runs.id", ondelete="CASCADE", name="fk_cells_run_id_runs"),
                  nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("precision", sa.String(32), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("imgsz", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("nms", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        *(sa.Column(name, sa.JSON(), nullable=True)
          for name in ("metrics", "latency", "latency_e2e", "telemetry", "provenance",
                       "artifacts", "warnings")),
        *(sa.Column(name, sa.Float(), nullable=True)
          for name in ("ap", "ap50", "latency_median_ms", "latency_p99_ms", "throughput_ips")),
        _pk("cells", "id"),
        sa.UniqueConstraint("run_id", "key", name="uq_cells_run_id"),
    )
    op.create_index("ix_cells_run_id_position", "cells", ["run_id", "position"])
    op.create_table(
        "latency_samples",
        _cell_id("latency_samples"),
        sa.Column("series", sa.String(16), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("value_ms", sa.Float(), nullable=False),
        _pk("latency_samples", "cell_id", "series", "idx"),
    )
    op.create_table(
        "class_ap",
        _cell_id("class_ap"),
        sa.Column("class_name", sa.String(255), nullable=False),
        sa.Column("ap", sa.Float(), nullable=True),
        sa.Column("ap50", sa.Float(), nullable=True),
        _pk("class_ap", "cell_id", "class_name"),
    )
    op.create_table(
        "telemetry_samples",
        _cell_id("telemetry_samples"),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("t_s", sa.Float(), nullable=False),
        *(sa.Column(name, sa.Float(), nullable=True)
          for name in ("power_w", "sm_clock_mhz", "mem_clock_mhz", "temp_c", "mem_used_mb",
                       "gpu_util")),
        _pk("telemetry_samples", "cell_id", "idx"),
    )


def downgrade() -> None:
    for table in ("telemetry_samples", "class_ap", "latency_samples", "cells", "runs"):
        op.drop_table(table)
