from __future__ import annotations

import pytest

from resolver.errors import ValidationError
from resolver.policy.jetstream import expand_grant, parse_grant
from resolver.policy.roles import compile_template, max_ttl, parse_role, role_set_name
from resolver.policy.subjects import subject_matches, validate_subject


@pytest.mark.parametrize(
    "subject",
    [
        "orders.>",
        "orders.*.new",
        "*",
        ">",
        "a.b.c",
        "orders.{{name()}}.>",
        "t.{{tag(team)}}.x",
        "{{account-name()}}.in",
        "$JS.API.INFO",
        "_INBOX.>",
    ],
)
def test_valid_subjects(subject: str) -> None:
    assert validate_subject(subject) == subject


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        ("", "non-empty"),
        ("orders..new", "empty token"),
        (".orders", "empty token"),
        ("orders.", "empty token"),
        ("orders.>.new", "whole last token"),
        ("orders.new>", "whole last token"),
        ("ord*ers", "whole token"),
        ("orders new", "whitespace"),
        ("orders.{{nope()}}", "unknown template function"),
        ("orders.{{tag()}}", "needs a tag name"),
        ("orders.{{name(x)}}", "takes no argument"),
        ("orders.{{name()", "malformed template"),
    ],
)
def test_invalid_subjects_say_why(subject: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        validate_subject(subject)


def test_subject_matching() -> None:
    assert subject_matches("orders.>", "orders.eu.new")
    assert not subject_matches("orders.>", "orders")
    assert subject_matches("orders.*.new", "orders.eu.new")
    assert not subject_matches("orders.*.new", "orders.eu.old")
    assert not subject_matches("orders.*", "orders.eu.new")


def test_role_parse_round_trip_and_errors() -> None:
    body = {
        "description": "Order writers",
        "publish": {"allow": ["orders.>"], "deny": ["orders.admin.>"]},
        "subscribe": ["orders.>", "work.* workers"],
        "responses": {"max": 1, "ttl": "5s"},
        "limits": {"subs": 100},
        "connection_types": ["STANDARD"],
        "max_ttl": "8h",
        "jetstream": [{"stream": "ORDERS", "access": "write", "subjects": ["orders.>"]}],
    }
    role = parse_role("orders-writer", body)
    assert role.max_ttl == 8 * 3600 and role.responses == (1, 5)
    assert parse_role("orders-writer", role.to_dict()) == role
    for bad, message in [
        ({"publish": {"allow": ["a..b"]}}, "publish.allow"),
        ({"publsh": []}, "unknown key"),
        ({"limits": {"conn": 1}}, "unknown limit"),
        ({"max_ttl": "forever"}, "max_ttl"),
        ({"connection_types": ["CARRIER_PIGEON"]}, "connection_types"),
        ({"jetstream": [{"stream": "S", "access": "write"}]}, "needs the stream's subjects"),
        ({"jetstream": [{"kv": "a.b"}]}, "not a valid"),
    ]:
        with pytest.raises(ValidationError, match=message):
            parse_role("r", bad)
    with pytest.raises(ValidationError, match="role name"):
        parse_role("bad name", {})


def test_role_set_template_is_the_union() -> None:
    reader = parse_role("reader", {"subscribe": ["orders.>"], "max_ttl": "8h"})
    writer = parse_role(
        "writer",
        {
            "publish": {"allow": ["orders.{{name()}}.>"], "deny": ["orders.admin.>"]},
            "limits": {"payload": 1024},
            "max_ttl": "1h",
            "connection_types": ["STANDARD"],
        },
    )
    assert role_set_name([writer, reader]) == "reader,writer"
    template = compile_template([writer, reader])
    assert template["pub"] == {"allow": ["orders.{{name()}}.>"], "deny": ["orders.admin.>"]}
    assert template["sub"] == {"allow": ["orders.>", "_INBOX.>"]}
    assert template["payload"] == -1  # reader is unlimited, and the union takes the larger
    # The reader restricts no connection type, so the set allows all of them.
    assert "allowed_connection_types" not in template
    assert max_ttl([writer, reader]) == 3600
    # A set that grants nothing in one direction denies everything in it (an empty allow
    # list would mean "anything" to nats-server).
    only_reader = compile_template([reader])
    assert only_reader["pub"] == {"deny": [">"]}


def test_kv_and_stream_expansion_is_scoped_to_the_name() -> None:
    read = expand_grant(parse_grant({"kv": "config", "access": "read"}, "g"))
    assert "$JS.API.STREAM.INFO.KV_config" in read
    assert "$KV.config.>" not in read
    write = expand_grant(parse_grant({"kv": "config", "access": "write"}, "g"))
    assert "$KV.config.>" in write and "$JS.API.STREAM.DELETE.KV_config" not in write
    manage = expand_grant(parse_grant({"stream": "ORDERS", "access": "manage"}, "g"))
    assert "$JS.API.STREAM.CREATE.ORDERS" in manage
    assert all("ORDERS" in s for s in manage)
