"""SCIM PATCH normalization, member plans and application, replaying what IdPs send."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scim2_models import EnterpriseUser, Group, User

from resolver.scim.errors import (
    InvalidFilterError,
    InvalidPathError,
    InvalidSyntaxError,
    InvalidValueError,
    MutabilityError,
    NoTargetError,
    ScimError,
)
from resolver.scim.patch import (
    BOOLEAN_ATTRIBUTES,
    MULTI_VALUED_ATTRIBUTES,
    PATCH_OP_SCHEMA,
    MemberPlan,
    MemberStep,
    PatchOperation,
    apply_operations,
    member_changes,
    normalize_patch,
)

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
ENTERPRISE_KEY = ENTERPRISE.lower()
GROUP_ID = "abf4dd94-a4c0-4f67-89c9-76b03340cb9b"
USER_ID = "2819c223-7f76-453a-919d-413861904646"


def body(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_OP_SCHEMA], "Operations": list(operations)}


def user_resource() -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": USER_ID,
        "userName": "bjensen@example.com",
        "name": {"givenName": "Barbara", "familyName": "Jensen"},
        "displayName": "Babs Jensen",
        "active": True,
        "emails": [
            {"value": "bjensen@example.com", "type": "work", "primary": True},
            {"value": "babs@jensen.org", "type": "home"},
        ],
        "meta": {"resourceType": "User"},
    }


def patched_user(*operations: dict[str, Any]) -> dict[str, Any]:
    ops = normalize_patch(body(*operations), resource_id=USER_ID)
    result = apply_operations(user_resource(), ops)
    # The contract: what comes out validates with scim2-models.
    User[EnterpriseUser].model_validate(result)
    return result


# --------------------------------------------------------------------------- normalization


def test_schema_facts_come_from_scim2_models() -> None:
    assert {"active", "emails.primary"} <= BOOLEAN_ATTRIBUTES
    assert {"emails", "members", "phonenumbers", "addresses"} <= MULTI_VALUED_ATTRIBUTES
    assert "name" not in MULTI_VALUED_ATTRIBUTES


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ([], InvalidSyntaxError),
        ("remove everything", InvalidSyntaxError),
        ({"Operations": [{"op": "add", "path": "title", "value": "x"}]}, InvalidSyntaxError),
        (
            {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                "Operations": [{"op": "add", "path": "title", "value": "x"}],
            },
            InvalidSyntaxError,
        ),
        (body(), InvalidSyntaxError),
        ({"schemas": [PATCH_OP_SCHEMA], "Operations": {"op": "add"}}, InvalidSyntaxError),
        (body("add"), InvalidSyntaxError),
        (body({"op": "merge", "path": "title", "value": "x"}), InvalidSyntaxError),
        (body({"path": "title", "value": "x"}), InvalidSyntaxError),
        (body({"op": "remove"}), NoTargetError),
        (body({"op": "Remove", "value": {"title": "x"}}), NoTargetError),
        (body({"op": "add", "path": "title"}), InvalidValueError),
        (body({"op": "replace", "value": "x"}), InvalidValueError),
        (body({"op": "add", "path": 7, "value": "x"}), InvalidPathError),
        (body({"op": "add", "path": "emails[type eq", "value": "x"}), InvalidPathError),
        (body({"op": "add", "path": 'emails.value eq "x"', "value": "x"}), InvalidPathError),
        (
            body({"op": "add", "path": "urn:example:unknown:1.0:User:x", "value": "x"}),
            InvalidPathError,
        ),
        (body({"op": "replace", "path": "active", "value": "maybe"}), InvalidValueError),
        (body({"op": "replace", "value": {"active": 0}}), InvalidValueError),
        (body({"op": "replace", "path": "id", "value": "other"}), MutabilityError),
        (body({"op": "remove", "path": "id"}), MutabilityError),
        (body({"op": "replace", "value": {"id": "other", "displayName": "x"}}), MutabilityError),
        (
            body({"op": "replace", "path": "meta.lastModified", "value": "2020-01-01T00:00:00Z"}),
            MutabilityError,
        ),
        (body({"op": "replace", "value": {"meta": {}}}), MutabilityError),
        (body({"op": "replace", "path": "title", "value": "a\x00b"}), InvalidValueError),
    ],
)
def test_bad_bodies_raise_the_rfc_error(raw: Any, error: type[ScimError]) -> None:
    with pytest.raises(error) as info:
        normalize_patch(raw, resource_id=GROUP_ID)
    assert info.value.status == 400


def test_deeply_nested_values_are_refused() -> None:
    value: Any = "x"
    for _ in range(5000):
        value = [value]
    with pytest.raises(InvalidSyntaxError):
        normalize_patch(body({"op": "add", "path": "emails", "value": value}), resource_id="u")


def test_schemas_and_operations_are_matched_without_case() -> None:
    raw = {
        "SCHEMAS": [PATCH_OP_SCHEMA.upper()],
        "operations": [{"OP": "ADD", "Path": "title", "Value": "Boss"}],
    }
    assert normalize_patch(raw, resource_id=USER_ID) == [PatchOperation("add", "title", "Boss")]


def test_entra_user_update_multi_and_single_valued() -> None:
    # Microsoft's documented "Update User [Multi-valued properties]" request.
    raw = body(
        {
            "op": "Replace",
            "path": 'emails[type eq "work"].value',
            "value": "updatedEmail@microsoft.com",
        },
        {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
    )
    ops = normalize_patch(raw, resource_id=USER_ID)
    assert [(o.op, o.attribute, o.sub_attribute, o.value) for o in ops] == [
        ("replace", "emails", "value", "updatedEmail@microsoft.com"),
        ("replace", "name.familyname", None, "updatedFamilyName"),
    ]
    assert str(ops[0].value_filter) == 'type eq "work"'

    result = apply_operations(user_resource(), ops)
    assert result["emails"][0] == {
        "value": "updatedEmail@microsoft.com",
        "type": "work",
        "primary": True,
    }
    assert result["emails"][1]["value"] == "babs@jensen.org"
    assert result["name"] == {"givenName": "Barbara", "familyName": "updatedFamilyName"}


@pytest.mark.parametrize("value", ["False", "false", False, [{"value": "False"}]])
def test_entra_deactivation_with_string_booleans(value: Any) -> None:
    result = patched_user({"op": "Replace", "path": "active", "value": value})
    assert result["active"] is False


def test_entra_no_path_replace_with_dotted_and_urn_keys() -> None:
    raw = body(
        {
            "op": "replace",
            "value": {
                "displayName": "Barbara J",
                "name.givenName": "Barb",
                "name.familyName": "J",
                "active": "True",
                f"{ENTERPRISE}:department": "Tour Operations",
                f"{ENTERPRISE}:manager": "26118915-6090-4610-87e4-49d8ca9f808d",
                'emails[type eq "work"].value': "barb@example.com",
            },
        }
    )
    ops = normalize_patch(raw, resource_id=USER_ID)
    assert [(o.attribute, o.value) for o in ops] == [
        ("displayname", "Barbara J"),
        ("name.givenname", "Barb"),
        ("name.familyname", "J"),
        ("active", True),
        (f"{ENTERPRISE_KEY}:department", "Tour Operations"),
        (f"{ENTERPRISE_KEY}:manager", {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}),
        ("emails", "barb@example.com"),
    ]

    result = apply_operations(user_resource(), ops)
    User[EnterpriseUser].model_validate(result)
    assert result["name"] == {"givenName": "Barb", "familyName": "J"}
    assert result["displayName"] == "Barbara J"
    assert result[ENTERPRISE] == {
        "department": "Tour Operations",
        "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"},
    }
    assert ENTERPRISE in result["schemas"]
    assert result["emails"][0]["value"] == "barb@example.com"


def test_no_path_replace_with_a_nested_extension_object() -> None:
    raw = body(
        {
            "op": "replace",
            "value": {
                "urn:ietf:params:scim:schemas:core:2.0:User:userName": "babs",
                ENTERPRISE: {"employeeNumber": "701984", "manager": {"value": "m-1"}},
                # Entra may add a schema of its own: ignored, never a failure.
                "urn:ietf:params:scim:schemas:extension:CustomExt:2.0:User": {"x": "y"},
                "urn:ietf:params:scim:schemas:extension:CustomExt:2.0:User:x": "y",
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            },
        }
    )
    ops = normalize_patch(raw, resource_id=USER_ID)
    assert [(o.attribute, o.value) for o in ops] == [
        ("username", "babs"),
        (f"{ENTERPRISE_KEY}:employeenumber", "701984"),
        (f"{ENTERPRISE_KEY}:manager", {"value": "m-1"}),
    ]
    result = apply_operations(user_resource(), ops)
    User[EnterpriseUser].model_validate(result)
    assert result["userName"] == "babs"
    assert result[ENTERPRISE] == {"employeeNumber": "701984", "manager": {"value": "m-1"}}


def test_path_naming_the_extension_expands_and_removes_it() -> None:
    ops = normalize_patch(
        body({"op": "add", "path": ENTERPRISE, "value": {"costCenter": "4130"}}),
        resource_id=USER_ID,
    )
    assert ops == [PatchOperation("add", f"{ENTERPRISE_KEY}:costcenter", "4130")]
    with_ext = apply_operations(user_resource(), ops)
    assert with_ext[ENTERPRISE] == {"costCenter": "4130"}

    removal = normalize_patch(body({"op": "remove", "path": ENTERPRISE}), resource_id=USER_ID)
    assert removal == [PatchOperation("remove", ENTERPRISE_KEY)]
    without = apply_operations(with_ext, removal)
    assert ENTERPRISE not in without
    assert ENTERPRISE not in without["schemas"]


def test_entra_legacy_single_value_wrapped_in_a_list() -> None:
    result = patched_user({"op": "Add", "path": "nickName", "value": [{"value": "Babs"}]})
    assert result["nickName"] == "Babs"


def test_okta_deactivation() -> None:
    # Okta never deletes users: it sends this no-path replace.
    result = patched_user({"op": "replace", "value": {"active": False}})
    assert result["active"] is False


def test_okta_password_sync_is_dropped() -> None:
    ops = normalize_patch(
        body({"op": "replace", "value": {"password": "t1meMa$heen", "active": True}}),
        resource_id=USER_ID,
    )
    assert ops == [PatchOperation("replace", "active", True)]


def test_replace_with_null_removes_and_add_with_null_does_nothing() -> None:
    result = patched_user(
        {"op": "replace", "path": "displayName", "value": None},
        {"op": "add", "path": "title", "value": None},
    )
    assert "displayName" not in result
    assert "title" not in result


def test_filtered_add_creates_the_entry_entra_expects() -> None:
    result = patched_user(
        {"op": "Add", "path": 'phoneNumbers[type eq "mobile"].value', "value": "+1 555 0100"},
        {"op": "Add", "path": 'addresses[type eq "work"].streetAddress', "value": "1 Main St"},
        {"op": "Add", "path": 'addresses[type eq "work"].locality', "value": "Springfield"},
    )
    assert result["phoneNumbers"] == [{"type": "mobile", "value": "+1 555 0100"}]
    assert result["addresses"] == [
        {"type": "work", "streetAddress": "1 Main St", "locality": "Springfield"}
    ]


def test_filtered_replace_without_a_spelled_out_entry_has_no_target() -> None:
    ops = normalize_patch(
        body({"op": "replace", "path": 'emails[value co "@nowhere"].type', "value": "other"}),
        resource_id=USER_ID,
    )
    with pytest.raises(NoTargetError):
        apply_operations(user_resource(), ops)


def test_filtered_remove_and_primary_stays_unique() -> None:
    result = patched_user(
        {"op": "remove", "path": 'emails[type eq "home"]'},
        {
            "op": "add",
            "path": "emails",
            "value": [{"value": "b@new.example", "type": "other", "primary": "true"}],
        },
    )
    assert result["emails"] == [
        {"value": "bjensen@example.com", "type": "work", "primary": False},
        {"value": "b@new.example", "type": "other", "primary": True},
    ]


def test_remove_listed_values_of_a_multi_valued_attribute() -> None:
    result = patched_user(
        {"op": "remove", "path": "emails", "value": [{"value": "BABS@jensen.org"}]}
    )
    assert [e["value"] for e in result["emails"]] == ["bjensen@example.com"]


def test_remove_a_sub_attribute_and_a_whole_attribute() -> None:
    result = patched_user(
        {"op": "remove", "path": "name.familyName"},
        {"op": "remove", "path": "emails"},
        {"op": "remove", "path": "title"},  # absent: nothing to do
    )
    assert result["name"] == {"givenName": "Barbara"}
    assert "emails" not in result


def test_replace_a_multi_valued_attribute_replaces_all_values() -> None:
    result = patched_user(
        {"op": "replace", "path": "emails", "value": [{"value": "only@example.com"}]}
    )
    assert result["emails"] == [{"value": "only@example.com"}]


def test_add_merges_a_complex_attribute() -> None:
    result = patched_user({"op": "add", "path": "name", "value": {"middleName": "Jane"}})
    assert result["name"] == {"givenName": "Barbara", "familyName": "Jensen", "middleName": "Jane"}


def test_apply_does_not_modify_its_input() -> None:
    resource = user_resource()
    before = copy.deepcopy(resource)
    ops = normalize_patch(
        body({"op": "replace", "path": 'emails[type eq "work"].value', "value": "x@y.example"}),
        resource_id=USER_ID,
    )
    apply_operations(resource, ops)
    assert resource == before


def test_apply_refuses_selecting_values_of_a_single_valued_attribute() -> None:
    ops = normalize_patch(
        body({"op": "replace", "path": 'name[givenName eq "Barbara"].familyName', "value": "x"}),
        resource_id=USER_ID,
    )
    with pytest.raises(InvalidPathError):
        apply_operations(user_resource(), ops)


# --------------------------------------------------------------------------- members


def group_ops(*operations: dict[str, Any]) -> list[PatchOperation]:
    return normalize_patch(body(*operations), resource_id=GROUP_ID)


def test_entra_member_removal_by_filter() -> None:
    ops = group_ops(
        {"op": "Remove", "path": 'members[value eq "7f4bc1a3-285e-48ae-8202-5accb43efb0e"]'}
    )
    plan = member_changes(ops)
    assert plan.steps == (MemberStep("remove", ("7f4bc1a3-285e-48ae-8202-5accb43efb0e",)),)
    assert plan == MemberPlan(
        plan.steps, clear=False, add=(), remove=("7f4bc1a3-285e-48ae-8202-5accb43efb0e",)
    )


def test_entra_legacy_member_removal_removes_only_the_listed_members() -> None:
    # Reading this as "remove all members" would wipe the group (DESIGN.md §3).
    ops = group_ops(
        {
            "op": "Remove",
            "path": "members",
            "value": [{"$ref": None, "value": "f648f8d5ea4e4cd38e9c"}, {"value": "a2"}],
        }
    )
    plan = member_changes(ops)
    assert not plan.clear
    assert plan.remove == ("f648f8d5ea4e4cd38e9c", "a2")
    assert plan.steps == (MemberStep("remove", ("f648f8d5ea4e4cd38e9c", "a2")),)


def test_remove_members_with_an_empty_value_list_removes_nobody() -> None:
    plan = member_changes(group_ops({"op": "Remove", "path": "members", "value": []}))
    assert plan.is_empty


def test_remove_members_without_value_removes_all() -> None:
    plan = member_changes(group_ops({"op": "remove", "path": "members"}))
    assert plan.steps == (MemberStep("remove_all"),)
    assert plan.clear and plan.add == () and plan.remove == ()


def test_entra_add_members() -> None:
    plan = member_changes(
        group_ops(
            {"op": "Add", "path": "members", "value": [{"$ref": None, "value": "f648f8d5ea4e"}]}
        )
    )
    assert plan == MemberPlan((MemberStep("add", ("f648f8d5ea4e",)),), add=("f648f8d5ea4e",))


def test_okta_group_push_remove_add_and_repeated_rename_in_one_request() -> None:
    raw = body(
        {"op": "replace", "value": {"id": GROUP_ID, "displayName": "Test SCIMv2"}},
        {"op": "remove", "path": 'members[value eq "89bb1940-b905-4575-9e7f-6f887cfb368e"]'},
        {
            "op": "add",
            "path": "members",
            "value": [
                {"value": "23a35c27-23d3-4c03-b4c5-6443c09e7173", "display": "test@okta.local"}
            ],
        },
    )
    ops = normalize_patch(raw, resource_id=GROUP_ID)
    # The id equal to the group's own is dropped: only the rename and the member ops remain.
    assert [(o.op, o.attribute) for o in ops] == [
        ("replace", "displayname"),
        ("remove", "members"),
        ("add", "members"),
    ]
    plan = member_changes(ops)
    assert plan.steps == (
        MemberStep("remove", ("89bb1940-b905-4575-9e7f-6f887cfb368e",)),
        MemberStep("add", ("23a35c27-23d3-4c03-b4c5-6443c09e7173",)),
    )
    assert plan.add == ("23a35c27-23d3-4c03-b4c5-6443c09e7173",)
    assert plan.remove == ("89bb1940-b905-4575-9e7f-6f887cfb368e",)

    group = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "id": GROUP_ID,
        "displayName": "Old",
    }
    result = apply_operations(group, ops)  # member ops are skipped: they go to the join table
    assert result == {**group, "displayName": "Test SCIMv2"}
    Group.model_validate(result)


def test_okta_repeated_rename_alone_changes_only_the_name() -> None:
    for _ in range(2):
        ops = group_ops({"op": "replace", "value": {"id": GROUP_ID, "displayName": "Eng"}})
        assert ops == [PatchOperation("replace", "displayname", "Eng")]
        assert member_changes(ops).is_empty


def test_member_plan_folds_in_order() -> None:
    ops = group_ops(
        {"op": "add", "path": "members", "value": [{"value": "a"}, {"value": "b"}]},
        {"op": "remove", "path": 'members[value eq "a" or value eq "c"]'},
        {"op": "add", "path": "members", "value": [{"value": "c"}]},
    )
    plan = member_changes(ops)
    assert plan.add == ("b", "c")
    assert plan.remove == ("a",)
    assert not plan.clear

    replaced = member_changes(
        group_ops(
            {"op": "add", "path": "members", "value": [{"value": "x"}]},
            {"op": "replace", "path": "members", "value": [{"value": "a"}, {"value": "b"}]},
            {"op": "remove", "path": 'members[value eq "b"]'},
        )
    )
    assert replaced.clear and replaced.add == ("a",) and replaced.remove == ()

    emptied = member_changes(group_ops({"op": "replace", "path": "members", "value": []}))
    assert emptied.steps == (MemberStep("replace"),)
    assert emptied.clear and emptied.add == ()


@pytest.mark.parametrize(
    ("operation", "error"),
    [
        ({"op": "remove", "path": 'members[display eq "x"]'}, InvalidFilterError),
        ({"op": "remove", "path": 'members[value ne "x"]'}, InvalidFilterError),
        ({"op": "add", "path": "members", "value": [{"display": "no id"}]}, InvalidValueError),
        ({"op": "add", "path": "members", "value": ["bare-id"]}, InvalidValueError),
        ({"op": "add", "path": "members", "value": [{"value": 42}]}, InvalidValueError),
        ({"op": "replace", "path": 'members[value eq "a"]', "value": {}}, InvalidPathError),
        (
            {"op": "replace", "path": 'members[value eq "a"].display', "value": "x"},
            InvalidPathError,
        ),
        ({"op": "replace", "path": "members.display", "value": "x"}, InvalidPathError),
    ],
)
def test_member_ops_that_cannot_be_planned(operation: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        member_changes(group_ops(operation))


# --------------------------------------------------------------------------- properties

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["True", "false", "members", "value", "emails", 'value eq "a"']),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "op",
                    "path",
                    "value",
                    "schemas",
                    "Operations",
                    "active",
                    "members",
                    "emails",
                    "name.givenName",
                    "id",
                    "meta",
                    "type",
                    "primary",
                    "display",
                    ENTERPRISE,
                    f"{ENTERPRISE}:manager",
                    'emails[type eq "work"].value',
                    "urn:x:y",
                    "",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)
_paths = st.sampled_from(
    [
        "members",
        'members[value eq "a"]',
        "emails",
        'emails[type eq "work"].value',
        "active",
        "name.givenName",
        "name",
        "id",
        "meta.created",
        ENTERPRISE,
        f"{ENTERPRISE}:manager",
        'emails[type eq "work" or primary eq true]',
        "emails.value",
        "urn:a:b:c",
        "members.value",
        'phoneNumbers[type eq "x"]',
        "x[",
        "",
        "displayName",
    ]
) | st.text(max_size=20)
_values = st.sampled_from(
    [
        "False",
        [{"value": "a"}],
        [{"value": "b", "display": "B"}],
        {"active": "true"},
        {"id": GROUP_ID, "displayName": "G"},
        {"value": "x", "type": "work", "primary": "True"},
        {"name.givenName": "x", f"{ENTERPRISE}:department": "d", ENTERPRISE: {"manager": "m"}},
        [{"value": "bjensen@example.com"}],
        [],
        None,
    ]
)
_operation = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "Replace", "remove", "Remove"])},
    optional={"path": _paths, "value": _values | _json},
)
_bodies = st.fixed_dictionaries(
    {
        "schemas": st.just([PATCH_OP_SCHEMA]),
        "Operations": st.lists(_operation, min_size=1, max_size=4),
    }
)


def _run_all(raw: Any) -> None:
    try:
        ops = normalize_patch(raw, resource_id=GROUP_ID)
    except ScimError:
        return
    try:
        member_changes(ops)
    except ScimError:
        pass
    try:
        apply_operations(user_resource(), ops)
    except ScimError:
        pass


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies)
def test_random_patch_bodies_only_raise_scim_errors(raw: dict[str, Any]) -> None:
    _run_all(raw)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_random_json_only_raises_scim_errors(raw: Any) -> None:
    _run_all(raw)
