"""The SQLite ledger: one file, shared safely by several server processes.

``sqlite3`` blocks, so every call runs in a worker thread and the event loop never waits on the disk. Writes go
through one connection, one thread at a time, so this process's own writers queue without busy-waiting; each is a
``BEGIN IMMEDIATE`` transaction, which takes the file's write lock before reading, so ``begin_or_join`` is atomic
across processes too (another process's writer waits up to its busy timeout, ``BUSY_TIMEOUT_S`` unless given; a
write still locked out then is a transient LedgerError). Reads use up to ``READERS`` more connections, which WAL
lets run beside a write. ``:memory:`` is one connection for everything: a second connection
would be a second, empty database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ._common import MIN_PREFIX, decode_cursor, encode_cursor, search_words
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
from ._sqlite_schema import (
    _HISTORY_WHERE,
    _JSON_COLUMNS,
    _MIGRATIONS,
    _SQL_BY_TASK,
    _SQL_CANCEL_TASK,
    _SQL_COUNT_MATCHES,
    _SQL_DELIVER,
    _SQL_EXPIRE,
    _SQL_GET,
    _SQL_HISTORY,
    _SQL_HISTORY_FEW_MATCHES,
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
    _SQL_RESERVE,
    _SQL_SET_VERSION,
    _SQL_SETTLE,
    _SQL_SPEND,
    _SQL_SPEND_BY_MODEL,
    _SQL_TASK_TTL,
    _SQL_TOUCH,
    _SQL_UPDATE,
    _SQL_VERSION,
    _SQL_WARNABLE,
    _SQL_WARNED,
)

T = TypeVar("T")

BUSY_TIMEOUT_S = 10.0  # how long a write waits for another process's write before giving up (by default)
# SQLite's result codes (the low byte) after which the same write may land later: BUSY, LOCKED, IOERR, FULL,
# CANTOPEN, PROTOCOL.
_TRANSIENT_CODES = frozenset({5, 6, 10, 13, 14, 15})
READERS = 4  # read connections (and threads) per store
FEW_MATCHES = 1000  # up to this many matches, history sorts them all rather than walk a time index


def _fts_query(words: list[str]) -> str:
    """An FTS5 query from search words: each one quoted (a term, never an operator), the last also a prefix."""
    return " ".join(f'"{word}"' for word in words) + ("*" if len(words[-1]) >= MIN_PREFIX else "")


def _make_private(path: Path) -> None:
    """The ledger holds prompts, inputs, URLs and paths: its files are its user's alone (0600).

    A folder it creates is 0700; an existing folder is left as its owner set it up. SQLite creates the -wal and
    -shm files later with the main file's permissions, so making the main file 0600 first covers them too.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))  # a new file is never readable by others, not even briefly
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = file.stat().st_mode
            if mode & 0o077:
                file.chmod(mode & 0o700)  # one made by an earlier version, before the ledger was private
        except OSError:  # not there yet, or another user's file: theirs to set
            pass


def _failed(path: str, exc: sqlite3.Error) -> LedgerError:
    code = getattr(exc, "sqlite_errorcode", None)
    transient = code is not None and (code & 0xFF) in _TRANSIENT_CODES
    return LedgerError(f"the ledger at {path} failed: {exc}", transient=transient)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _params(row: LedgerRow) -> dict[str, Any]:
    data = row.model_dump(mode="json")
    return {**data, **{column: _json(data[column]) for column in _JSON_COLUMNS}}


def _to_row(values: sqlite3.Row) -> LedgerRow:
    data = dict(values)
    for column in _JSON_COLUMNS:
        if data[column] is not None:
            data[column] = json.loads(data[column])
    return LedgerRow.model_validate(data)


class SQLiteLedger:
    """The ledger in one SQLite file (or in memory, for one process)."""

    def __init__(self, *, path: str, busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._memory = path == ":memory:"
        self._writer: sqlite3.Connection | None = None
        self._idle_readers: list[sqlite3.Connection] = []
        self._write_limiter = anyio.CapacityLimiter(1)
        # In memory, reads take turns with writes on the one connection.
        self._read_limiter = self._write_limiter if self._memory else anyio.CapacityLimiter(READERS)

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._open)

    async def close(self) -> None:
        async with self._write_limiter:
            await anyio.to_thread.run_sync(self._close)

    async def begin_or_join(self, new: NewGeneration, *, window_seconds: float, now: float) -> tuple[LedgerRow, bool]:
        def run(conn: sqlite3.Connection) -> tuple[LedgerRow, bool]:
            identity = (new.principal, new.request_hash, new.api_base)
            found = conn.execute(_SQL_JOINABLE, (*identity, now - window_seconds)).fetchone()
            if found is not None and not abandoned(_to_row(found), owner=new.owner, now=now):
                return _to_row(found), True
            if found is None:
                found = conn.execute(_SQL_WARNABLE, (*identity, now, new.owner)).fetchone()
            if found is not None:  # the caller is warned about it instead of submitting again
                conn.execute(_SQL_WARNED, (ABANDONED, now, found["id"]))
                return _to_row(conn.execute(_SQL_GET, (found["id"],)).fetchone()), True
            row = LedgerRow(**new.model_dump(), id=uuid.uuid4().hex, state="submitting", created_at=now, updated_at=now)
            conn.execute(_SQL_INSERT, _params(row))
            return row, False

        return await self._write(run)

    async def update(self, row_id: str, changes: Changes, *, now: float) -> LedgerRow:
        data = changes.model_dump(mode="json")
        params = {**data, **{c: _json(data[c]) for c in ("images", "usage", "saved_files")}, "now": now, "id": row_id}
        return await self._change(row_id, _SQL_UPDATE, params)

    async def mark_delivered(self, row_id: str) -> bool:
        return await self._write(lambda conn: conn.execute(_SQL_DELIVER, (row_id,)).rowcount == 1)

    async def cancel_task(self, row_id: str, *, now: float) -> tuple[LedgerRow, bool]:
        def run(conn: sqlite3.Connection) -> tuple[LedgerRow, bool]:
            changed = conn.execute(_SQL_CANCEL_TASK, (now, row_id)).rowcount == 1
            found = conn.execute(_SQL_GET, (row_id,)).fetchone()
            if found is None:
                raise LedgerError(f"no generation {row_id!r} in the ledger")
            return _to_row(found), changed

        return await self._write(run)

    async def keep_task_ttl(self, row_id: str, *, ttl_ms: int) -> LedgerRow:
        return await self._change(row_id, _SQL_TASK_TTL, (ttl_ms, row_id))

    async def get(self, row_id: str) -> LedgerRow | None:
        found = await self._read(lambda conn: conn.execute(_SQL_GET, (row_id,)).fetchone())
        return None if found is None else _to_row(found)

    async def last_delivered(
        self, *, principal: str, api_base: str, request_hash: str, since: float
    ) -> LedgerRow | None:
        found = await self._read(
            lambda conn: conn.execute(_SQL_LAST_DELIVERED, (principal, request_hash, api_base, since)).fetchone()
        )
        return None if found is None else _to_row(found)

    async def by_task(self, task_id: str, *, principal: str | None) -> LedgerRow | None:
        found = await self._read(lambda conn: conn.execute(_SQL_BY_TASK, (task_id, principal, principal)).fetchone())
        return None if found is None else _to_row(found)

    async def expire_submitting(self, *, older_than: float, now: float) -> int:
        return await self._write(lambda conn: conn.execute(_SQL_EXPIRE, (ABANDONED, now, now, older_than)).rowcount)

    async def renew_leases(self, *, owner: str, until: float) -> int:
        return await self._write(lambda conn: conn.execute(_SQL_RENEW, (until, owner)).rowcount)

    async def history(self, query: Query) -> tuple[list[LedgerRow], str | None]:
        match: str | None = None
        if query.search is not None:
            words = search_words(query.search)
            if not words:  # nothing to look for (only punctuation): nothing matches
                return [], None
            match = _fts_query(words)
        where: list[str] = []
        params: list[Any] = []
        for name in ("principal", "model", "state", "since", "until", "cursor"):
            if (value := getattr(query, name)) is not None:
                where.append(_HISTORY_WHERE[name])
                params += decode_cursor(value) if name == "cursor" else [value]

        def run(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            sql, clauses, values = _SQL_HISTORY, where, params
            if match is not None:
                matches = conn.execute(_SQL_COUNT_MATCHES, (match, FEW_MATCHES + 1)).fetchone()[0]
                if matches == 0:
                    return []
                if matches <= FEW_MATCHES:
                    sql, values = _SQL_HISTORY_FEW_MATCHES, [match, *params]
                else:
                    clauses, values = [_HISTORY_WHERE["many_matches"], *where], [match, *params]
            sql = sql.format(where=" AND ".join(clauses) or "1")
            return conn.execute(sql, (*values, query.limit + 1)).fetchall()

        found = await self._read(run)
        rows = [_to_row(values) for values in found[: query.limit]]
        return rows, encode_cursor(rows[-1]) if len(found) > query.limit else None

    async def spend(self, *, principal: str, since: float) -> float:
        total = await self._read(lambda conn: conn.execute(_SQL_SPEND, (principal, since)).fetchone()[0])
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
        # Inside the BEGIN IMMEDIATE of _write: no other writer, in any process, between the read and the hold.
        # A few indexed reads of at most a day of minutes and one minute of rows, so cheap enough for _write to run
        # inline on the event loop.
        def run(conn: sqlite3.Connection) -> Reservation:
            owner = conn.execute(_SQL_OWNER, (row_id,)).fetchone()
            if owner is None or owner[0] != principal:
                raise LedgerError(f"no generation {row_id!r} of this principal in the ledger")
            since = now - window_seconds
            first = minute_of(since)
            own = owner[2] if owner[1] > first else 0.0

            def rows_of(minute: int, after: float) -> list[tuple[float, float]]:
                bounds = (principal, after, (minute + 1) * SPEND_MINUTE_S + 1, minute, row_id)
                return [(at, usd) for at, usd in conn.execute(_SQL_MINUTE_ROWS, bounds)]

            edge = rows_of(first, since)
            whole = conn.execute(_SQL_MINUTES_TOTAL, (principal, first)).fetchone()[0]
            reservation = policy.decide(amount=amount, spent=max(sum(usd for _, usd in edge) + whole - own, 0.0))
            if reservation.ok:
                conn.execute(_SQL_RESERVE, (amount, amount, now, row_id))
            elif (need := policy.need_to_age_out(reservation)) is not None:
                minutes = [
                    (minute, usd - (own if minute == owner[1] else 0.0))
                    for minute, usd in conn.execute(_SQL_MINUTES, (principal, first))
                ]
                found = leaving(edge, minutes, need)
                if isinstance(found, tuple):
                    minute, before = found
                    rows = rows_of(minute, (minute - 1) * SPEND_MINUTE_S)
                    found = leaving_in_minute(rows, need - before, minute)
                if found is not None:
                    reservation = reservation.model_copy(update={"frees_at": found + window_seconds})
            return reservation

        return await self._write(run)

    async def settle(self, row_id: str, *, actual_usd: float | None, now: float) -> LedgerRow:
        if actual_usd is None:
            return await self._change(row_id, _SQL_TOUCH, (now, row_id))
        return await self._change(row_id, _SQL_SETTLE, (actual_usd, now, row_id))

    async def release(self, row_id: str, *, now: float) -> LedgerRow:
        return await self._change(row_id, _SQL_RELEASE, (now, row_id))

    async def spend_report(self, *, principal: str | None, now: float) -> dict[str, Any]:
        params = {"principal": principal, "day": now - SPEND_WINDOW_S, "month": now - REPORT_MONTH_S}
        found = await self._read(lambda conn: conn.execute(_SQL_SPEND_BY_MODEL, params).fetchall())
        return build_spend_report([(model, rows, day, month) for model, rows, day, month in found])

    async def _change(self, row_id: str, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> LedgerRow:
        def run(conn: sqlite3.Connection) -> LedgerRow:
            conn.execute(sql, params)
            found = conn.execute(_SQL_GET, (row_id,)).fetchone()
            if found is None:
                raise LedgerError(f"no generation {row_id!r} in the ledger")
            return _to_row(found)

        return await self._write(run)

    async def _insert_rows(self, rows: Iterable[LedgerRow]) -> None:
        """Many finished rows in one transaction (bench/ledger.py fills a large ledger with it)."""
        await self._write(lambda conn: conn.executemany(_SQL_INSERT, map(_params, rows)))

    # -- threads and connections --------------------------------------------------------------------------------

    # A cancelled caller still waits for its thread (run_sync's default): a transaction is never left half-seen.
    async def _write(self, run: Callable[[sqlite3.Connection], T]) -> T:
        # A write is tens of microseconds of SQLite but hundreds to hop to a worker thread. So when no thread holds
        # the connection, try it here without waiting on any lock (busy_timeout 0); if another process holds the
        # file's write lock, nothing was done and the write goes to a thread that may wait for it.
        if self._write_limiter.borrowed_tokens == 0:
            done, result = self._in_transaction_now(run)
            if done:
                return result  # type: ignore[return-value]
        return await anyio.to_thread.run_sync(self._in_transaction, run, limiter=self._write_limiter)

    def _in_transaction_now(self, run: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]:
        """(True, result) if the write lock was free at once, else (False, None) with nothing done."""
        conn = self._connection()
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False, None  # locked by another process: nothing was begun
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        try:
            try:
                result = run(conn)
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            return True, result
        except sqlite3.Error as exc:
            raise _failed(self._path, exc) from exc

    async def _read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._reading, run, limiter=self._read_limiter)

    def _in_transaction(self, run: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = run(conn)
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:  # run() or COMMIT failed
                    conn.execute("ROLLBACK")
            return result
        except sqlite3.Error as exc:
            raise _failed(self._path, exc) from exc

    def _reading(self, run: Callable[[sqlite3.Connection], T]) -> T:
        try:
            writer = self._connection()
            if self._memory:
                return run(writer)
            # The read limiter lets at most READERS threads here, so at most READERS connections are ever made.
            conn = self._idle_readers.pop() if self._idle_readers else self._connect()
            try:
                return run(conn)
            finally:
                self._idle_readers.append(conn)
        except sqlite3.Error as exc:
            raise _failed(self._path, exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._writer is None:
            raise LedgerError("the ledger is not open")
        return self._writer

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, ours are explicit. timeout is SQLite's busy_timeout.
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        # NORMAL is durable in WAL mode except for the last transactions before a power cut; it skips an fsync per
        # commit.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _open(self) -> None:
        try:
            if not self._memory:
                _make_private(Path(self._path))
            conn = self._connect()
            try:
                self._use_wal(conn)
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open the ledger at {self._path}: {exc}") from exc
        self._writer = conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """WAL: readers and a writer at once; the file remembers it. Switching a new file to it needs the file to
        itself for a moment, and two processes opening one new ledger at once can find it taken in a way SQLite's
        busy timeout does not always wait out ("database is locked" at once): tried again until that timeout."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.02)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others then find the file up to date
        try:
            version = conn.execute(_SQL_VERSION).fetchone()[0] if conn.execute(_SQL_META_EXISTS).fetchone() else 0
            if version > len(_MIGRATIONS):
                raise LedgerError(
                    f"the ledger at {self._path} has schema version {version}, newer than this qolaba-mcp understands"
                    f" ({len(_MIGRATIONS)}); upgrade qolaba-mcp or point QOLABA_LEDGER_URL elsewhere"
                )
            for number in range(version + 1, len(_MIGRATIONS) + 1):
                for statement in _MIGRATIONS[number - 1]:
                    conn.execute(statement)
                conn.execute(_SQL_SET_VERSION, (number,))
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _close(self) -> None:
        for conn in (*self._idle_readers, *([self._writer] if self._writer else [])):
            conn.close()
        self._idle_readers.clear()
        self._writer = None
