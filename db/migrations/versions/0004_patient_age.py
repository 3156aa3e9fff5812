"""patient age in completed years per instance, for routing on age

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Instances received before this revision have no age: routes with age bounds skip them.
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_age_years", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_column("patient_age_years")
