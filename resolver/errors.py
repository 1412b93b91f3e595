"""Domain errors. No aiohttp here: ``resolver.http.errors`` maps them to responses in one place."""

from __future__ import annotations


class ResolverError(Exception):
    """Base of every error the service raises on purpose. ``str(err)`` is safe to show."""

    #: A short machine-readable code for the JSON error body.
    code = "error"


class ConfigError(ResolverError):
    """A setting is missing or invalid; the message names the key."""

    code = "invalid_config"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


class ValidationError(ResolverError):
    code = "invalid_request"


class NotFoundError(ResolverError):
    code = "not_found"


class ConflictError(ResolverError):
    code = "conflict"


class AuthenticationError(ResolverError):
    code = "unauthenticated"


class PermissionDeniedError(ResolverError):
    code = "forbidden"


class SealingError(ResolverError):
    """A sealed secret cannot be opened: wrong master key or damaged data."""

    code = "sealing_failed"


class RateLimitedError(ResolverError):
    """Too many requests with one API token; ``retry_after`` is in whole seconds."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
