"""Bulk import of account JWTs signed elsewhere: an nsc store, a full resolver's ``dir``,
a nats-account-server store, or a ``/jwt/v1/pack`` text (``pubkey|jwt`` lines).

Each JWT goes through the same checks as ``nsc push`` (``resolver.accounts.upload``): a
trusted issuer, the subject its own key, strictly newer than what is stored. The caller
gives each one its own transaction, so one bad file stops nothing but itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.upload import apply_upload, prepare_upload
from resolver.audit.service import Actor
from resolver.errors import ValidationError
from resolver.natsjwt import JWTError, decode

IMPORTED, NOT_NEWER, FAILED = "imported", "not newer", "failed"


@dataclass(frozen=True)
class Candidate:
    """One JWT found in the input: where it came from, and its text."""

    origin: str
    token: str


def find_account_jwts(paths: Iterable[Path]) -> tuple[list[Candidate], int]:
    """Account JWTs in ``paths`` (files and directories, ``*.jwt`` found recursively), and
    how many other JWTs were passed over (an nsc store also holds operator and user JWTs)."""
    found: list[Candidate] = []
    others = 0
    for candidate in _candidates(paths):
        try:
            kind = decode(candidate.token).type
        except JWTError:
            kind = "account"  # let the upload checks say what is wrong with it
        if kind == "account":
            found.append(candidate)
        else:
            others += 1
    return found, others


def _candidates(paths: Iterable[Path]) -> Iterator[Candidate]:
    for path in paths:
        files = sorted(path.rglob("*.jwt")) if path.is_dir() else [path]
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValidationError(f"cannot read {file}: {exc}") from None
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines and all("|" in line for line in lines):
                # A pack: "pubkey|jwt" a line.
                for number, line in enumerate(lines, start=1):
                    yield Candidate(f"{file}:{number}", line.split("|", 1)[1].strip())
            else:
                yield Candidate(str(file), text.strip())


@dataclass
class ImportTotals:
    imported: int = 0
    not_newer: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def count(self, outcome: str, origin: str, reason: str = "") -> None:
        if outcome == IMPORTED:
            self.imported += 1
        elif outcome == NOT_NEWER:
            self.not_newer += 1
        else:
            self.failed.append((origin, reason))


async def import_one(session: AsyncSession, candidate: Candidate, *, actor: Actor) -> str:
    """Check and store one account JWT in the caller's transaction; its outcome.

    ``ValidationError`` (a bad JWT, an untrusted issuer) and ``ConflictError`` (a deleted
    account) propagate: the caller rolls back and counts it as failed. A JWT no newer than
    the stored one is ``NOT_NEWER``: importing the same store twice is harmless.
    """
    subject = _subject_of(candidate.token)
    upload = await prepare_upload(session, candidate.token.encode(), subject)
    stored = upload.existing
    if stored is not None and stored.deleted_at is None:
        if upload.decoded.iat <= (stored.issued_at or 0):
            return NOT_NEWER
    await apply_upload(session, upload, actor=actor)
    return IMPORTED


def _subject_of(token: str) -> str:
    try:
        return decode(token).subject
    except JWTError as exc:
        raise ValidationError(f"not a valid JWT: {exc}") from None
