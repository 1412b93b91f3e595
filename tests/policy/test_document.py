from __future__ import annotations

from pathlib import Path

import pytest

from resolver.errors import ValidationError
from resolver.policy.document import parse_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "policy.example.yaml"


def test_example_policy_parses_and_round_trips() -> None:
    doc = parse_policy(EXAMPLE.read_text())
    assert set(doc.accounts) == {"ORDERS"}
    assert set(doc.roles) == {"orders-writer", "orders-reader"}
    assert [b.selector for b in doc.bindings][-1] == "token claim roles='orders.ci'"
    assert doc.bindings[2].until is not None and doc.bindings[2].until.year == 2026
    again = parse_policy(doc.to_yaml())
    assert again == doc


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("accounts: [1]", "accounts: expected a mapping"),
        ("nonsense: 1", "unknown top-level"),
        ("roles:\n  r:\n    publish: ['a..b']", "roles.r"),
        ("accounts:\n  A:\n    limits: {conn: many}", "accounts.A"),
        ("roles: {r: {}}\nbindings:\n  - {group: G, account: A, role: nope}", "bindings[0].role"),
        ("roles: {r: {}}\nbindings:\n  - {account: A, role: r}", "exactly one of"),
        (
            "roles: {r: {}}\nbindings:\n  - {group: G, account: A, role: r, until: tomorrow}",
            "bindings[0].until",
        ),
        (
            "roles: {r: {}}\nbindings:\n  - {group: G, account: A, role: r}\n"
            "  - {group: G, account: A, role: r}",
            "declared twice",
        ),
        (
            "accounts: {A: {}}\nroles: {r: {}}\nbindings:\n  - {group: G, account: B, role: r}",
            "not declared under accounts",
        ),
        ("roles:\n  r: {\n", "not valid YAML at line"),
    ],
)
def test_errors_name_the_place(text: str, where: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_policy(text)
    assert where in str(info.value)
