"""issued keys remember the claim bindings they rest on

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "issued_key_claims",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("issued_key_id", BIG_ID, nullable=False),
        sa.Column("binding_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["issued_key_id"],
            ["issued_user_keys.id"],
            name=op.f("fk_issued_key_claims_issued_key_id_issued_user_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_issued_key_claims")),
    )
    with op.batch_alter_table("issued_key_claims") as batch_op:
        batch_op.create_index(batch_op.f("ix_issued_key_claims_binding_id"), ["binding_id"])
        batch_op.create_index(batch_op.f("ix_issued_key_claims_issued_key_id"), ["issued_key_id"])


def downgrade() -> None:
    with op.batch_alter_table("issued_key_claims") as batch_op:
        batch_op.drop_index(batch_op.f("ix_issued_key_claims_issued_key_id"))
        batch_op.drop_index(batch_op.f("ix_issued_key_claims_binding_id"))
    op.drop_table("issued_key_claims")
