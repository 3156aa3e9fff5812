"""DICOM TLS per destination: on/off, CA file, client certificate and key files

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 07:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("destination", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tls_enabled", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("tls_ca_file", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("tls_cert_file", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("tls_key_file", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("destination", schema=None) as batch_op:
        batch_op.drop_column("tls_key_file")
        batch_op.drop_column("tls_cert_file")
        batch_op.drop_column("tls_ca_file")
        batch_op.drop_column("tls_enabled")
