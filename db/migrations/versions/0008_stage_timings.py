"""per-stage timings of every job; a route's expected instance count

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 07:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stage_ms", sa.JSON(), nullable=True))

    with op.batch_alter_table("route", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expected_instances", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("route", schema=None) as batch_op:
        batch_op.drop_column("expected_instances")

    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("stage_ms")
