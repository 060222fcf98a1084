"""Who is calling, when the HTTP transport knows it (OAuth): one person, one principal, one folder of images.

The MCP layer says who acts for the current call (``act_as``, from the verified token's issuer and subject); the
domain asks (``acting_person``) when it picks the principal that scopes the ledger, and the folder to save in. A
context variable rather than a parameter threaded through every call: each MCP request runs in its own task, so
the value never outlives the call it was set for, and nothing below the MCP layer needs to know about tokens.
"""

from __future__ import annotations

import hashlib
import re
from contextvars import ContextVar
from dataclasses import dataclass

PERSON_PREFIX = "oauth "


@dataclass(frozen=True, kw_only=True)
class Person:
    """A person as their authorization server names them: ``subject`` is unique only within ``issuer``."""

    issuer: str
    subject: str

    @property
    def principal(self) -> str:
        """The ledger's principal: readable, so ``qolaba-mcp spend`` can list people by subject (never a token)."""
        return f"{PERSON_PREFIX}{self.issuer} {self.subject}"

    @property
    def folder(self) -> str:
        """A folder name of their own: the subject made safe for a path, and a hash that keeps two apart."""
        digest = hashlib.sha256(self.principal.encode()).hexdigest()[:12]
        return f"{re.sub(r'[^A-Za-z0-9._-]', '_', self.subject)[:40].lstrip('.')}-{digest}"


def subject_of(principal: str) -> str | None:
    """The subject of a person's principal (None for a key-hash principal)."""
    if not principal.startswith(PERSON_PREFIX):
        return None
    parts = principal[len(PERSON_PREFIX) :].split(" ", 1)
    return parts[1] if len(parts) == 2 else None


_acting: ContextVar[Person | None] = ContextVar("qolaba_mcp_person", default=None)


def act_as(person: Person | None) -> None:
    """The person the rest of this call (this task) acts for; None: the caller is known by its key alone."""
    _acting.set(person)


def acting_person() -> Person | None:
    return _acting.get()
