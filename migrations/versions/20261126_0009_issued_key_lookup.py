"""issued_user_keys: index (public_key, account_id) instead of public_key alone

The credentials hot path asks whether a public key was issued in an account to someone
else; indexed by public_key alone, SQLite's planner chose (account_id, user_id) and walked
every key the account ever issued, so each request grew slower with the table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("issued_user_keys", schema=None) as batch_op:
        batch_op.create_index(
            "ix_issued_user_keys_public_key_account", ["public_key", "account_id"], unique=False
        )
        batch_op.drop_index(batch_op.f("ix_issued_user_keys_public_key"))


def downgrade() -> None:
    with op.batch_alter_table("issued_user_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_issued_user_keys_public_key"), ["public_key"], unique=False
        )
        batch_op.drop_index("ix_issued_user_keys_public_key_account")
