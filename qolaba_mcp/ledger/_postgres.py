"""The PostgreSQL ledger: one database shared by any number of server replicas.

asyncpg and its pool (``POOL_MIN``..``POOL_MAX`` connections). Two transaction-scoped advisory locks make the
replicas agree: one around creating or migrating the schema, so replicas starting together do not race, and one
per (principal, api_base, request_hash) around ``begin_or_join``, taken before its read, so of two identical calls
on two replicas one finds the other's row. Search is a generated ``tsvector`` column with a GIN index, queried with
the same words and prefix rule as SQLite's (``search_words``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # no type information ships with asyncpg

from ._common import MIN_PREFIX, decode_cursor, encode_cursor, search_words
from ._postgres_schema import (
    _FIELDS,
    _HISTORY_WHERE,
    _MIGRATIONS,
    _SQL_ANALYZE,
    _SQL_BY_TASK,
    _SQL_CANCEL_TASK,
    _SQL_DELIVER,
    _SQL_EXPIRE,
    _SQL_GET,
    _SQL_HISTORY,
    _SQL_INSERT,
    _SQL_JOINABLE,
    _SQL_LAST_DELIVERED,
    _SQL_META_EXISTS,
    _SQL_MINUTE_ROWS,
    _SQL_MINUTES,
    _SQL_MINUTES_TOTAL,
    _SQL_OWNER,
    _SQL_RELEASE,
    _SQL_RENEW,
    _SQL_REQUEST_LOCK,
    _SQL_RESERVE,
    _SQL_SCHEMA_LOCK,
    _SQL_SET_VERSION,
    _SQL_SETTLE,
    _SQL_SPEND,
    _SQL_SPEND_BY_MODEL,
    _SQL_SPEND_LOCK,
    _SQL_TASK_TTL,
    _SQL_TOUCH,
    _SQL_UPDATE,
    _SQL_VERSION,
    _SQL_WARNABLE,
    _SQL_WARNED,
)
from ._records import (
    ABANDONED,
    REPORT_MONTH_S,
    SPEND_MINUTE_S,
    SPEND_WINDOW_S,
    BudgetPolicy,
    Changes,
    LedgerError,
    LedgerRow,
    NewGeneration,
    Query,
    Reservation,
    abandoned,
    build_spend_report,
    leaving,
    leaving_in_minute,
    minute_of,
)

POOL_MIN = 1
POOL_MAX = 10
CONNECT_TIMEOUT_S = 10.0

# SQLSTATE classes after which the same statement may succeed later: connection exception, insufficient resources
# (disk full, too many connections), operator intervention (pg_terminate_backend, shutdown), transaction rollback
# (deadlock, serialization), system error (I/O).
_TRANSIENT_CLASSES = frozenset({"08", "53", "57", "40", "58"})


def _tsquery(words: list[str]) -> str:
    """A tsquery from search words: all of them, the last also as a prefix. Words are letters and digits only, so
    quoting each one leaves nothing for to_tsquery to read as an operator."""
    return " & ".join(f"'{word}'" for word in words) + (":*" if len(words[-1]) >= MIN_PREFIX else "")


def _to_row(record: Any) -> LedgerRow:
    return LedgerRow.model_validate(dict(record))


def _values(row: LedgerRow) -> list[Any]:
    data = row.model_dump(mode="json")
    return [data[field] for field in _FIELDS]


def _redacted(url: str) -> str:
    """``url`` without its password, to show in messages."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a broken IPv6 address: nothing safe to show
        return "QOLABA_LEDGER_URL"
    if parts.password is not None:
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}")
    return urlunsplit(parts._replace(query=re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)))


async def _init_connection(conn: Any) -> None:
    # JSONB in and out as Python values (asyncpg's default is text).
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PostgresLedger:
    """The ledger in a PostgreSQL database."""

    def __init__(self, *, url: str) -> None:
        self._url = url
        self._pool: Any = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url, min_size=POOL_MIN, max_size=POOL_MAX, init=_init_connection, timeout=CONNECT_TIMEOUT_S
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError) as exc:
            raise LedgerError(f"cannot open the ledger at {_redacted(self._url)}: {exc}") from exc
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def begin_or_join(self, new: NewGeneration, *, window_seconds: float, now: float) -> tuple[LedgerRow, bool]:
        async with self._transaction() as conn:
            await conn.execute(_SQL_REQUEST_LOCK, f"{new.principal} {new.api_base} {new.request_hash}")
            identity = (new.principal, new.request_hash, new.api_base)
            found = await conn.fetchrow(_SQL_JOINABLE, *identity, now - window_seconds)
            if found is not None and not abandoned(_to_row(found), owner=new.owner, now=now):
                return _to_row(found), True
            if found is None:
                found = await conn.fetchrow(_SQL_WARNABLE, *identity, now, new.owner)
            if found is not None:  # the caller is warned about it instead of submitting again
                return _to_row(await conn.fetchrow(_SQL_WARNED, found["id"], ABANDONED, now)), True
            row = LedgerRow(**new.model_dump(), id=uuid.uuid4().hex, state="submitting", created_at=now, updated_at=now)
            await conn.execute(_SQL_INSERT, *_values(row))
            return row, False

    async def update(self, row_id: str, changes: Changes, *, now: float) -> LedgerRow:
        data = changes.model_dump(mode="json")
        fields = ("state", "task_id", "finished_at", "images", "usage", "cost_usd", "error", "saved_files")
        async with self._connection() as conn:
            found = await conn.fetchrow(_SQL_UPDATE, row_id, *(data[field] for field in fields), now)
        if found is None:
            raise LedgerError(f"no generation {row_id!r} in the ledger")
        return _to_row(found)

    async def mark_delivered(self, row_id: str) -> bool:
        async with self._connection() as conn:
            status: str = await conn.execute(_SQL_DELIVER, row_id)
        return status == "UPDATE 1"

    async def cancel_task(self, row_id: str, *, now: float) -> tuple[LedgerRow, bool]:
        async with self._connection() as conn:
            cancelled = await conn.fetchrow(_SQL_CANCEL_TASK, row_id, now)
            found = cancelled or await conn.fetchrow(_SQL_GET, row_id)
        if found is None:
            raise LedgerError(f"no generation {row_id!r} in the ledger")
        return _to_row(found), cancelled is not None

    async def keep_task_ttl(self, row_id: str, *, ttl_ms: int) -> LedgerRow:
        return await self._change(row_id, _SQL_TASK_TTL, ttl_ms)

    async def get(self, row_id: str) -> LedgerRow | None:
        async with self._connection() as conn:
            found = await conn.fetchrow(_SQL_GET, row_id)
        return None if found is None else _to_row(found)

    async def last_delivered(
        self, *, principal: str, api_base: str, request_hash: str, since: float
    ) -> LedgerRow | None:
        async with self._connection() as conn:
            found = await conn.fetchrow(_SQL_LAST_DELIVERED, principal, request_hash, api_base, since)
        return None if found is None else _to_row(found)

    async def by_task(self, task_id: str, *, principal: str | None) -> LedgerRow | None:
        async with self._connection() as conn:
            found = await conn.fetchrow(_SQL_BY_TASK, task_id, principal)
        return None if found is None else _to_row(found)

    async def expire_submitting(self, *, older_than: float, now: float) -> int:
        async with self._connection() as conn:
            status: str = await conn.execute(_SQL_EXPIRE, now, older_than, ABANDONED)
        return int(status.rpartition(" ")[2])  # "UPDATE <count>"

    async def renew_leases(self, *, owner: str, until: float) -> int:
        async with self._connection() as conn:
            status: str = await conn.execute(_SQL_RENEW, owner, until)
        return int(status.rpartition(" ")[2])

    async def history(self, query: Query) -> tuple[list[LedgerRow], str | None]:
        where: list[str] = []
        params: list[Any] = []

        def add(name: str, *values: Any) -> None:
            where.append(_HISTORY_WHERE[name].format(*range(len(params) + 1, len(params) + 1 + len(values))))
            params.extend(values)

        if query.search is not None:
            words = search_words(query.search)
            if not words:  # nothing to look for (only punctuation): nothing matches
                return [], None
            add("search", _tsquery(words))
        for name in ("principal", "model", "state", "since", "until"):
            if (value := getattr(query, name)) is not None:
                add(name, value)
        if query.cursor is not None:
            add("cursor", *decode_cursor(query.cursor))
        sql = _SQL_HISTORY.format(where=" AND ".join(where) or "true", limit=len(params) + 1)
        async with self._connection() as conn:
            found = await conn.fetch(sql, *params, query.limit + 1)
        rows = [_to_row(record) for record in found[: query.limit]]
        return rows, encode_cursor(rows[-1]) if len(found) > query.limit else None

    async def spend(self, *, principal: str, since: float) -> float:
        async with self._connection() as conn:
            total = await conn.fetchval(_SQL_SPEND, principal, since)
        return float(total)

    async def reserve(
        self,
        row_id: str,
        *,
        principal: str,
        amount: float,
        policy: BudgetPolicy,
        window_seconds: float = SPEND_WINDOW_S,
        now: float,
    ) -> Reservation:
        async with self._transaction() as conn:
            await conn.execute(_SQL_SPEND_LOCK, principal)
            # Read committed: each statement after the lock sees what earlier holders of the lock committed.
            owner = await conn.fetchrow(_SQL_OWNER, row_id)
            if owner is None or owner[0] != principal:
                raise LedgerError(f"no generation {row_id!r} of this principal in the ledger")
            since = now - window_seconds
            first = minute_of(since)
            own = owner[2] if owner[1] > first else 0.0

            async def rows_of(minute: int, after: float) -> list[tuple[float, float]]:
                bounds = (principal, after, (minute + 1) * SPEND_MINUTE_S + 1, minute, row_id)
                return [(record[0], record[1]) for record in await conn.fetch(_SQL_MINUTE_ROWS, *bounds)]

            edge = await rows_of(first, since)
            whole = await conn.fetchval(_SQL_MINUTES_TOTAL, principal, first)
            reservation = policy.decide(amount=amount, spent=max(sum(usd for _, usd in edge) + whole - own, 0.0))
            if reservation.ok:
                await conn.execute(_SQL_RESERVE, row_id, amount, now)
            elif (need := policy.need_to_age_out(reservation)) is not None:
                minutes = [
                    (record[0], record[1] - (own if record[0] == owner[1] else 0.0))
                    for record in await conn.fetch(_SQL_MINUTES, principal, first)
                ]
                found = leaving(edge, minutes, need)
                if isinstance(found, tuple):
                    minute, before = found
                    rows = await rows_of(minute, (minute - 1) * SPEND_MINUTE_S)
                    found = leaving_in_minute(rows, need - before, minute)
                if found is not None:
                    reservation = reservation.model_copy(update={"frees_at": found + window_seconds})
            return reservation

    async def settle(self, row_id: str, *, actual_usd: float | None, now: float) -> LedgerRow:
        if actual_usd is None:
            return await self._change(row_id, _SQL_TOUCH, now)
        return await self._change(row_id, _SQL_SETTLE, actual_usd, now)

    async def release(self, row_id: str, *, now: float) -> LedgerRow:
        return await self._change(row_id, _SQL_RELEASE, now)

    async def spend_report(self, *, principal: str | None, now: float) -> dict[str, Any]:
        async with self._connection() as conn:
            found = await conn.fetch(_SQL_SPEND_BY_MODEL, principal, now - SPEND_WINDOW_S, now - REPORT_MONTH_S)
        return build_spend_report([(record[0], record[1], record[2], record[3]) for record in found])

    async def _change(self, row_id: str, sql: str, *params: Any) -> LedgerRow:
        async with self._connection() as conn:
            found = await conn.fetchrow(sql, row_id, *params)
        if found is None:
            raise LedgerError(f"no generation {row_id!r} in the ledger")
        return _to_row(found)

    async def _insert_rows(self, rows: Iterable[LedgerRow]) -> None:
        """Many finished rows in one transaction (bench/ledger.py fills a large ledger with it)."""
        async with self._transaction() as conn:
            await conn.executemany(_SQL_INSERT, [_values(row) for row in rows])
        async with self._connection() as conn:
            await conn.execute(_SQL_ANALYZE)  # what autovacuum would do soon after a bulk load

    async def _migrate(self) -> None:
        async with self._transaction() as conn:
            await conn.execute(_SQL_SCHEMA_LOCK)  # replicas starting together: one migrates, the others then wait
            version = await conn.fetchval(_SQL_VERSION) if await conn.fetchval(_SQL_META_EXISTS) else 0
            if version > len(_MIGRATIONS):
                raise LedgerError(
                    f"the ledger at {_redacted(self._url)} has schema version {version}, newer than this qolaba-mcp"
                    f" understands ({len(_MIGRATIONS)}); upgrade qolaba-mcp or point QOLABA_LEDGER_URL elsewhere"
                )
            for number in range(version + 1, len(_MIGRATIONS) + 1):
                await conn.execute(_MIGRATIONS[number - 1])
                await conn.execute(_SQL_SET_VERSION, number)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; the driver's errors become LedgerError here, once."""
        if self._pool is None:
            raise LedgerError("the ledger is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            state = getattr(exc, "sqlstate", None)
            transient = not isinstance(exc, asyncpg.PostgresError) or str(state)[:2] in _TRANSIENT_CLASSES
            raise LedgerError(f"the ledger at {_redacted(self._url)} failed: {exc}", transient=transient) from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        async with self._connection() as conn, conn.transaction():
            yield conn
