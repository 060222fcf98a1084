"""The generation ledger: every generation recorded before the API is called, in SQLite or PostgreSQL.

``open_ledger(url)`` picks the backend from ``QOLABA_LEDGER_URL`` (a SQLite URL may end in ``?busy_timeout=<s>``);
each backend module (and its driver) is imported only then, so importing this package stays cheap.
"""

from __future__ import annotations

import re
from pathlib import Path

from ._records import (
    ACTIVE_STATES,
    SCHEMA_VERSION,
    Changes,
    ImageRecord,
    LedgerError,
    LedgerRow,
    LedgerState,
    LedgerStore,
    NewGeneration,
    Query,
    Reservation,
    abandoned,
    principal_of,
    request_hash,
)
from ._writes import WriteQueue

# Plain sorted() order, as qolaba_mcp.__all__ (ruff's isort-style order would put the constants first).
__all__ = [  # noqa: RUF022
    "ACTIVE_STATES",
    "Changes",
    "ImageRecord",
    "LedgerError",
    "LedgerRow",
    "LedgerState",
    "LedgerStore",
    "NewGeneration",
    "Query",
    "Reservation",
    "SCHEMA_VERSION",
    "WriteQueue",
    "abandoned",
    "default_ledger_url",
    "open_ledger",
    "principal_of",
    "request_hash",
]

_ACCEPTED = "sqlite:///<absolute path>, sqlite:///:memory: or postgresql://user@host:port/database"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def default_ledger_url(data_dir: Path, *, name: str = "ledger.db") -> str:
    """The ledger's URL when QOLABA_LEDGER_URL is not set: a SQLite file in the data folder."""
    return f"sqlite:///{(data_dir.absolute() / name).as_posix()}"


def _busy_timeout(query: str, default: float) -> float:
    """``busy_timeout=<seconds>`` from a SQLite URL's query: how long a write waits for another process's."""
    for name, _, value in (part.partition("=") for part in query.split("&") if part):
        if name != "busy_timeout":
            raise LedgerError(f"a SQLite QOLABA_LEDGER_URL takes only ?busy_timeout=<seconds>, not {name[:40]!r}")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= 3600:
            raise LedgerError(f"busy_timeout in QOLABA_LEDGER_URL must be 0 to 3600 seconds, not {value[:40]!r}")
        return seconds
    return default


def open_ledger(url: str) -> LedgerStore:
    """The backend for ``url``, not yet opened (call ``open()``); a LedgerError for a URL it cannot serve."""
    scheme, separator, rest = url.partition("://")
    if separator and scheme == "sqlite":
        rest, _, query = rest.partition("?")
        path = rest.removeprefix("/")
        if rest.startswith("/") and (path == ":memory:" or Path(path).is_absolute()):
            from ._sqlite import BUSY_TIMEOUT_S, SQLiteLedger

            return SQLiteLedger(path=path, busy_timeout=_busy_timeout(query, BUSY_TIMEOUT_S))
        raise LedgerError(
            f"QOLABA_LEDGER_URL {url!r} does not name an absolute path; use {_ACCEPTED}"
            " (an absolute path makes four slashes: sqlite:////var/lib/qolaba/ledger.db)"
        )
    if separator and scheme in ("postgresql", "postgres"):
        try:
            from ._postgres import PostgresLedger
        except ImportError as exc:
            raise LedgerError(
                f"a PostgreSQL QOLABA_LEDGER_URL needs the asyncpg driver: pip install 'qolaba-mcp[postgres]' ({exc})"
            ) from exc
        return PostgresLedger(url=url)
    # Never echo the URL itself: it may hold a password.
    what = f"a {scheme!r} URL" if separator and _SCHEME.fullmatch(scheme) else "something that is not a URL"
    raise LedgerError(f"QOLABA_LEDGER_URL must be {_ACCEPTED}; it is {what}")
