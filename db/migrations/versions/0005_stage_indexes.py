"""indexes on the stage timestamps that metrics and stats scan by window

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 08:13:28.484754
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_delivery_sent_at"), ["sent_at"], unique=False)

    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_finished_at"), ["finished_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_job_started_at"), ["started_at"], unique=False)

    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_study_completed_at"), ["completed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_completed_at"))

    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_started_at"))
        batch_op.drop_index(batch_op.f("ix_job_finished_at"))

    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delivery_sent_at"))
