"""audit_log: columns and indexes for filtering by user and account (issue #7)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_name", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("account_key", sa.String(length=56), nullable=True))
        batch_op.create_index("ix_audit_log_user_name_at", ["user_name", "at"], unique=False)
        batch_op.create_index("ix_audit_log_account_key_at", ["account_key", "at"], unique=False)
    _backfill()


#: Actions whose ``target`` has always been the account's public key.
_ACCOUNT_TARGETS = (
    "account.create",
    "account.update",
    "account.delete",
    "account.upload",
    "account.revoke",
    "account.resign",
    "account.user.issue",
    "account.revocations.compact",
    "account.revocations.prune",
    "auth_callout.setup",
    "credentials.issue",
    "policy.revoke",
    "policy.user.issue",
)


def _backfill() -> None:
    """Fill the new columns of rows written before them, from what those rows hold, so
    ``?user=`` and ``?account=`` find old history too. One UPDATE per rule."""
    bind = op.get_bind()
    log = sa.table(
        "audit_log",
        sa.column("action", sa.String),
        sa.column("actor", sa.String),
        sa.column("target", sa.String),
        sa.column("user_name", sa.String),
        sa.column("account_key", sa.String),
        sa.column("details", sa.JSON),
    )

    def detail(key: str) -> sa.ColumnElement[str]:
        if bind.dialect.name == "postgresql":
            return sa.func.json_extract_path_text(log.c.details, key)
        return sa.func.json_extract(log.c.details, f"$.{key}")

    bind.execute(
        log.update()
        .where(
            log.c.action.in_(_ACCOUNT_TARGETS),
            log.c.target.like("A%"),
            sa.func.length(log.c.target) == 56,
        )
        .values(account_key=log.c.target)
    )
    # The user JWT's name: the userName of a person, the workload's name.
    bind.execute(
        log.update().where(log.c.action == "credentials.issue").values(user_name=log.c.actor)
    )
    for actions, key in (
        (("scim.user.create", "scim.user.replace", "scim.user.patch"), "userName"),
        (("policy.user.issue",), "user"),
        (("account.user.issue",), "name"),
    ):
        bind.execute(
            log.update()
            .where(log.c.action.in_(actions))
            .values(user_name=sa.func.substr(detail(key), 1, 256))
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_account_key_at")
        batch_op.drop_index("ix_audit_log_user_name_at")
        batch_op.drop_column("account_key")
        batch_op.drop_column("user_name")
