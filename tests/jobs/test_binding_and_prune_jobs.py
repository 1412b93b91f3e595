"""The binding end-time job and the revocation prune job, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.app import create_app
from resolver.config import Settings
from resolver.db.models import Binding, Group, GroupMember, User, utcnow
from resolver.jobs.bindings import lapse_ended_bindings
from resolver.jobs.scheduler import JOBS
from resolver.sealing import Sealer
from tests.accounts.conftest import sealer, sessions  # noqa: F401  (fixtures)
from tests.policy.deprovision_world import (
    audits,
    bind,
    issue,
    outbox_count,
    refused,
    served_revocations,
    setup_operator_account,
)


async def test_ended_binding_is_a_removal_handled_once(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    now = utcnow()
    async with sessions() as session, session.begin():
        guest = User(user_name="guest", user_name_key="guest")
        staff = User(user_name="staff", user_name_key="staff")
        contractors = Group(display_name="Contractors", display_name_key="contractors")
        employees = Group(display_name="Employees", display_name_key="employees")
        session.add_all([guest, staff, contractors, employees])
        await session.flush()
        session.add_all(
            [
                GroupMember(group_id=contractors.id, user_id=guest.id),
                GroupMember(group_id=contractors.id, user_id=staff.id),
                GroupMember(group_id=employees.id, user_id=staff.id),
            ]
        )
        timeboxed = await bind(
            session, acc, "reader", group_id=contractors.id, ends_at=now + timedelta(hours=1)
        )
        await bind(session, acc, "reader", group_name="Employees")
        # A token-claim binding has no SCIM members: handled (marked) without a re-sign.
        claim = Binding(
            account_id=acc,
            role_id=timeboxed.role_id,
            claim_name="dept",
            claim_value="ops",
            ends_at=now - timedelta(minutes=1),
        )
        session.add(claim)
        await session.flush()
        guest_key = await issue(session, sealer, settings, acc, guest.id, ["reader"], ttl=86_400)
        staff_key = await issue(session, sealer, settings, acc, staff.id, ["reader"], ttl=86_400)
        ids = {"timeboxed": timeboxed.id, "claim": claim.id}
    pushes = await outbox_count(sessions, acc)

    # Before the end time only the claim binding is due.
    assert await lapse_ended_bindings(sessions, sealer, settings, now=now) == [ids["claim"]]
    assert await outbox_count(sessions, acc) == pushes

    later = now + timedelta(hours=1, seconds=1)
    assert await lapse_ended_bindings(sessions, sealer, settings, now=later) == [ids["timeboxed"]]
    served = await served_revocations(sessions, acc)
    assert refused(served, guest_key)
    assert not refused(served, staff_key)  # still reaches the account through Employees
    assert await outbox_count(sessions, acc) == pushes + 1
    lapses = await audits(sessions, "binding.lapse")
    assert [row.target for row in lapses] == [str(ids["claim"]), str(ids["timeboxed"])]
    assert lapses[1].details["members"] == 2 and lapses[1].details["accounts_resigned"] == [acc]

    # Handled once: the next runs find nothing.
    assert await lapse_ended_bindings(sessions, sealer, settings, now=later) == []

    # Extended after it lapsed, then ended again: handled again.
    async with sessions() as session, session.begin():
        row = await session.get_one(Binding, ids["timeboxed"])
        row.ends_at = later + timedelta(hours=1)
        guest_id = await session.scalar(select(User.id).where(User.user_name == "guest"))
        guest_again = await issue(session, sealer, settings, acc, guest_id, ["reader"], ttl=86_400)
    assert await lapse_ended_bindings(sessions, sealer, settings, now=later) == []
    again = later + timedelta(hours=2)
    assert await lapse_ended_bindings(sessions, sealer, settings, now=again) == [ids["timeboxed"]]
    assert refused(await served_revocations(sessions, acc), guest_again)


async def test_jobs_are_registered(settings: Settings) -> None:
    app = create_app(settings)
    specs = {spec.name: spec.every_seconds for spec in app[JOBS]}
    assert specs["lapse_ended_bindings"] == settings.accounts.binding_check_seconds == 30
    assert specs["prune_revocations"] == settings.accounts.prune_check_seconds == 3600
