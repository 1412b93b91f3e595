"""signing key rotation state (issue #7)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("operator_signing_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True))
    # Every key so far signed accounts: it is active (or was, if retired) since it was made.
    op.execute("UPDATE operator_signing_keys SET activated_at = created_at")
    with op.batch_alter_table("account_signing_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("issued_user_keys", schema=None) as batch_op:
        batch_op.create_index(
            "ix_issued_user_keys_signing_key_expires_at",
            ["signing_key", "expires_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("issued_user_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_issued_user_keys_signing_key_expires_at")
    with op.batch_alter_table("account_signing_keys", schema=None) as batch_op:
        batch_op.drop_column("superseded_at")
    with op.batch_alter_table("operator_signing_keys", schema=None) as batch_op:
        batch_op.drop_column("activated_at")
