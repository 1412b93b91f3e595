"""SCIM protocol errors (RFC 7644 §3.12), raised by the pure SCIM code and the SCIM services.

Kept free of aiohttp: the HTTP layer turns any ``ScimError`` into a response with
``status`` and ``to_body()``, so every IdP gets the error body it understands instead of a
5xx it would retry forever.
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


class ScimError(Exception):
    """A SCIM error response: HTTP status, optional ``scimType`` and a human-readable detail.

    Subclasses fix ``status`` and ``scim_type``; the base class can be raised directly for any
    other combination (``ScimError("gone", status=410)``).
    """

    status: int = 400
    scim_type: str | None = None

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        scim_type: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        # Instance attributes shadow the class defaults only when given, so a subclass keeps
        # its own status/scimType.
        if status is not None:
            self.status = status
        if scim_type is not None:
            self.scim_type = scim_type

    def to_body(self) -> dict[str, Any]:
        """The RFC 7644 error body; ``status`` is a string there, and ``scimType`` optional."""
        body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(self.status)}
        if self.scim_type:
            body["scimType"] = self.scim_type
        body["detail"] = self.detail
        return body

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, scim_type={self.scim_type!r}, "
            f"detail={self.detail!r})"
        )


class InvalidFilterError(ScimError):
    """The filter syntax was invalid, or names an attribute or comparison we do not support."""

    scim_type = "invalidFilter"


class TooManyError(ScimError):
    """The filter yields more results than the server is willing to compute or return."""

    scim_type = "tooMany"


class UniquenessError(ScimError):
    """A unique attribute (``userName``, group ``displayName``) is already taken."""

    status = 409
    scim_type = "uniqueness"


class MutabilityError(ScimError):
    """The request tries to change a read-only or immutable attribute (``id``, ``meta``)."""

    scim_type = "mutability"


class InvalidSyntaxError(ScimError):
    """The request body does not have the structure of the message it claims to be."""

    scim_type = "invalidSyntax"


class InvalidPathError(ScimError):
    """A PATCH ``path`` is malformed or names something the resource cannot have."""

    scim_type = "invalidPath"


class NoTargetError(ScimError):
    """A PATCH ``path`` matched nothing where the operation needs a target."""

    scim_type = "noTarget"


class InvalidValueError(ScimError):
    """A value is missing or does not fit the attribute (also: unknown member ids)."""

    scim_type = "invalidValue"


class InvalidVersionError(ScimError):
    """The client asked for a SCIM protocol version we do not speak."""

    scim_type = "invalidVers"


class SensitiveError(ScimError):
    """The request put sensitive data (e.g. a password) in the URL."""

    status = 403
    scim_type = "sensitive"


class ScimNotFoundError(ScimError):
    """The resource (or endpoint) does not exist; RFC 7644 gives 404 no scimType."""

    status = 404


class PreconditionFailedError(ScimError):
    """``If-Match`` did not match the resource's current version."""

    status = 412


class PayloadTooLargeError(ScimError):
    """The request body exceeds what the server accepts (``maxPayloadSize``, bulk limits)."""

    status = 413


class UnsupportedMediaTypeError(ScimError):
    """The body is neither ``application/scim+json`` nor ``application/json``."""

    status = 415
