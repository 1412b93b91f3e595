"""bindings keep the group displayName as written

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("bindings") as batch_op:
        batch_op.add_column(sa.Column("group_name", sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bindings") as batch_op:
        batch_op.drop_column("group_name")
