"""ServiceProviderConfig, ResourceTypes and Schemas, generated from scim2-models.

Built once per base URL; no aiohttp and no database.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    EnterpriseUser,
    ETag,
    Filter,
    Group,
    Meta,
    Patch,
    ResourceType,
    Schema,
    ServiceProviderConfig,
    Sort,
    User,
)

from resolver.scim.resources import UserModel
from resolver.scim.storage import MAX_COUNT


def _dump(obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = obj.model_dump(
        scim_ctx=Context.RESOURCE_QUERY_RESPONSE, mode="json", exclude_none=True
    )
    return result


@cache
def service_provider_config(base: str, max_payload: int) -> dict[str, Any]:
    config = ServiceProviderConfig(
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=max_payload),
        filter=Filter(supported=True, max_results=MAX_COUNT),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=True),
        authentication_schemes=[
            AuthenticationScheme(
                type="oauthbearertoken",
                name="Bearer token",
                description="A token made by `nats-iam-resolver token create --scope scim`",
                primary=True,
            )
        ],
        meta=Meta(resource_type="ServiceProviderConfig", location=f"{base}/ServiceProviderConfig"),
    )
    return _dump(config)


@cache
def resource_types(base: str) -> dict[str, dict[str, Any]]:
    """By id: ``User`` (with the enterprise extension) and ``Group``."""
    found = {}
    for model, endpoint in ((UserModel, "/Users"), (Group, "/Groups")):
        rtype = ResourceType.from_resource(model)
        rtype.endpoint = endpoint
        rtype.meta = Meta(resource_type="ResourceType", location=f"{base}/ResourceTypes/{rtype.id}")
        found[str(rtype.id)] = _dump(rtype)
    return found


@cache
def schemas(base: str) -> dict[str, dict[str, Any]]:
    """By URN: the resource schemas and the three discovery schemas RFC 7643 §7 lists."""
    found = {}
    for model in (User, EnterpriseUser, Group, ServiceProviderConfig, ResourceType, Schema):
        schema: Schema = model.to_schema()
        schema.meta = Meta(resource_type="Schema", location=f"{base}/Schemas/{schema.id}")
        found[str(schema.id)] = _dump(schema)
    return found
