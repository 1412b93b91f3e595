"""keys of the auth callout: its user, its xkey and the sentinel user

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "auth_callout_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("user_public_key", sa.String(length=56), nullable=False),
        sa.Column("user_seed_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("xkey_public_key", sa.String(length=56), nullable=False),
        sa.Column("xkey_seed_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("sentinel_public_key", sa.String(length=56), nullable=False),
        sa.Column("sentinel_seed_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("sentinel_jwt", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_auth_callout_keys_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_callout_keys")),
        sa.UniqueConstraint("account_id", name=op.f("uq_auth_callout_keys_account_id")),
        sa.UniqueConstraint("user_public_key", name=op.f("uq_auth_callout_keys_user_public_key")),
        sa.UniqueConstraint("xkey_public_key", name=op.f("uq_auth_callout_keys_xkey_public_key")),
        sa.UniqueConstraint(
            "sentinel_public_key", name=op.f("uq_auth_callout_keys_sentinel_public_key")
        ),
    )


def downgrade() -> None:
    op.drop_table("auth_callout_keys")
