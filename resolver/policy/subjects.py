"""NATS subject validation for role definitions, before anything reaches an account JWT.

nats-server accepts a permission subject only if every token is non-empty, ``*`` stands
alone as a token and ``>`` stands alone as the last token; role templates may also use the
user-scope template functions, which the server expands per user at connect time.
"""

from __future__ import annotations

import re

from resolver.errors import ValidationError

#: Template functions nats-server expands in ``user_scope`` templates (server/auth.go).
TEMPLATE_FUNCTIONS = (
    "name",
    "subject",
    "tag",
    "account-name",
    "account-subject",
    "account-tag",
)
_TEMPLATE = re.compile(r"\{\{\s*([a-z-]+)\(([^(){}]*)\)\s*\}\}")
_NEEDS_ARGUMENT = {"tag", "account-tag"}
_FORBIDDEN = re.compile(r"[\s\x00]")
MAX_SUBJECT_LENGTH = 1024


def _check_templates(subject: str) -> str:
    """Validate template calls and return the subject with each replaced by a plain token."""

    def replace(match: re.Match[str]) -> str:
        function, argument = match.group(1), match.group(2).strip()
        if function not in TEMPLATE_FUNCTIONS:
            raise ValidationError(
                f"subject {subject!r}: unknown template function {function}(); "
                f"allowed: {', '.join(f + '()' for f in TEMPLATE_FUNCTIONS)}"
            )
        if (function in _NEEDS_ARGUMENT) != bool(argument):
            wanted = "needs a tag name" if function in _NEEDS_ARGUMENT else "takes no argument"
            raise ValidationError(f"subject {subject!r}: {function}() {wanted}")
        return "T"

    plain = _TEMPLATE.sub(replace, subject)
    if "{{" in plain or "}}" in plain:
        raise ValidationError(f"subject {subject!r}: malformed template (use {{{{name()}}}})")
    return plain


def validate_subject(subject: object, *, templates: bool = True) -> str:
    """``subject`` if it is a valid permission subject, else a ``ValidationError`` saying why."""
    if not isinstance(subject, str) or not subject:
        raise ValidationError(f"subject must be a non-empty string, got {subject!r}")
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise ValidationError(f"subject is longer than {MAX_SUBJECT_LENGTH} characters")
    plain = _check_templates(subject) if templates else subject
    if _FORBIDDEN.search(plain):
        raise ValidationError(f"subject {subject!r}: whitespace is not allowed")
    parts = plain.split(".")
    for index, part in enumerate(parts):
        if not part:
            raise ValidationError(f"subject {subject!r}: empty token (leading, trailing or '..')")
        if "*" in part and part != "*":
            raise ValidationError(f"subject {subject!r}: '*' must be a whole token")
        if ">" in part and (part != ">" or index != len(parts) - 1):
            raise ValidationError(f"subject {subject!r}: '>' must be the whole last token")
    return subject


def validate_queue_subject(entry: object) -> str:
    """A permission entry may be ``subject queue`` (a queue group permission, subscribe only)."""
    if isinstance(entry, str) and " " in entry.strip():
        subject, _, queue = entry.strip().partition(" ")
        validate_subject(subject)
        validate_subject(queue.strip())
        return entry.strip()
    return validate_subject(entry)


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a literal ``subject`` is matched by ``pattern`` (``*`` and ``>`` wildcards)."""
    p_tokens, s_tokens = pattern.split("."), subject.split(".")
    for index, part in enumerate(p_tokens):
        if part == ">":
            return len(s_tokens) > index
        if index >= len(s_tokens) or part not in ("*", s_tokens[index]):
            return False
    return len(p_tokens) == len(s_tokens)
