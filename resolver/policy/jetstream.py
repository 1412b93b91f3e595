"""JetStream grants by name (streams, consumers, KV buckets) expanded to exact API subjects.

Operators think "read the ORDERS stream" or "write the config bucket"; nats-server only knows
subjects. The expansion lists the ``$JS.API...`` requests a client library makes for each
kind of use, scoped to the named stream, so a grant never opens another stream's API.
Replies come back on ``_INBOX.>``, which ``roles.compile_template`` adds for every publisher.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from resolver.errors import ValidationError
from resolver.policy.subjects import validate_subject

LEVELS = ("read", "write", "manage")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


@dataclass(frozen=True)
class JetStreamGrant:
    #: stream | consumer | kv
    kind: str
    #: Stream or bucket name; for a consumer, the stream name.
    name: str
    access: str
    consumer: str | None = None
    #: Subjects of the stream the role may publish to (stream write/manage).
    subjects: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        target = f"{self.name}/{self.consumer}" if self.kind == "consumer" else self.name
        out: dict[str, Any] = {self.kind: target, "access": self.access}
        if self.subjects:
            out["subjects"] = list(self.subjects)
        return out


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _STREAM_NAME.match(value):
        raise ValidationError(f"{what}: {value!r} is not a valid stream, consumer or bucket name")
    return value


def parse_grant(body: Mapping[str, Any], what: str) -> JetStreamGrant:
    kinds = [k for k in ("stream", "consumer", "kv") if k in body]
    if len(kinds) != 1:
        raise ValidationError(f"{what}: name exactly one of stream, consumer or kv")
    unknown = set(body) - {"stream", "consumer", "kv", "access", "subjects"}
    if unknown:
        raise ValidationError(f"{what}: unknown key(s) {sorted(unknown)}")
    kind = kinds[0]
    access = body.get("access", "read")
    if access not in LEVELS:
        raise ValidationError(f"{what}: access must be one of {', '.join(LEVELS)}")
    subjects: tuple[str, ...] = ()
    if body.get("subjects") is not None:
        if kind != "stream" or not isinstance(body["subjects"], list):
            raise ValidationError(f"{what}: subjects is a list, for streams only")
        subjects = tuple(validate_subject(s, templates=True) for s in body["subjects"])
    if kind == "consumer":
        stream, _, consumer = str(body["consumer"]).partition("/")
        if access != "read":
            raise ValidationError(f"{what}: a consumer grant is read only (use the stream)")
        return JetStreamGrant(
            "consumer", _name(stream, what), access, consumer=_name(consumer, what)
        )
    if kind == "stream" and access == "write" and not subjects:
        raise ValidationError(f"{what}: write access needs the stream's subjects to publish to")
    return JetStreamGrant(kind, _name(body[kind], what), access, subjects=subjects)


def parse_grants(value: object, what: str) -> tuple[JetStreamGrant, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValidationError(f"{what}: expected a list of grants")
    return tuple(parse_grant(item, f"{what}[{i}]") for i, item in enumerate(value))


def _read_stream(stream: str) -> list[str]:
    # Info, direct and stored-message gets, and ephemeral (ordered/push or pull) consumers.
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _manage_stream(stream: str) -> list[str]:
    return [
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.STREAM.DELETE.{stream}",
        f"$JS.API.STREAM.PURGE.{stream}",
        f"$JS.API.STREAM.MSG.DELETE.{stream}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.API.CONSUMER.LIST.{stream}",
        f"$JS.API.CONSUMER.NAMES.{stream}",
    ]


def expand_grant(grant: JetStreamGrant) -> list[str]:
    """Publish permissions (API requests and data subjects) one grant needs."""
    if grant.kind == "consumer":
        stream, consumer = grant.name, grant.consumer
        return [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>",
        ]
    if grant.kind == "kv":
        bucket, stream = grant.name, f"KV_{grant.name}"
        subjects = [*_read_stream(stream), f"$JS.API.DIRECT.GET.{stream}.$KV.{bucket}.>"]
        if grant.access in ("write", "manage"):
            subjects.append(f"$KV.{bucket}.>")
        if grant.access == "manage":
            subjects += _manage_stream(stream)
        return subjects
    subjects = _read_stream(grant.name)
    if grant.access in ("write", "manage"):
        subjects += list(grant.subjects)
    if grant.access == "manage":
        subjects += _manage_stream(grant.name)
    return subjects


def expand_grants(grants: Iterable[JetStreamGrant]) -> tuple[list[str], list[str]]:
    """(publish, subscribe) subjects for a set of grants; replies arrive on the inbox."""
    publish: list[str] = []
    for grant in grants:
        publish += expand_grant(grant)
    if publish:
        # Account info is what every client library asks first.
        publish.insert(0, "$JS.API.INFO")
    return list(dict.fromkeys(publish)), []
