"""result options: SEG, GSPS per route; SC encoding per destination

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 05:23:19.743920
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("destination", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "sc_encoding",
                sa.Enum(
                    "lossless", "jpeg_baseline", name="scencoding", native_enum=False, length=16
                ),
                server_default="lossless",
                nullable=False,
            )
        )

    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "sc_encoding",
                sa.Enum(
                    "lossless", "jpeg_baseline", name="scencoding", native_enum=False, length=16
                ),
                nullable=True,
            )
        )

    with op.batch_alter_table("route", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("produce_seg", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("produce_gsps", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("route", schema=None) as batch_op:
        batch_op.drop_column("produce_gsps")
        batch_op.drop_column("produce_seg")

    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.drop_column("sc_encoding")

    with op.batch_alter_table("destination", schema=None) as batch_op:
        batch_op.drop_column("sc_encoding")
