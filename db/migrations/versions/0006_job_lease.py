"""a lease on running jobs, renewed by their worker, so a dead worker's job is re-queued

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 07:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("worker", sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f("ix_job_lease_expires_at"), ["lease_expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_lease_expires_at"))
        batch_op.drop_column("worker")
        batch_op.drop_column("lease_expires_at")
