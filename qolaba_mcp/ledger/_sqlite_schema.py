"""The SQLite ledger's SQL: its numbered migrations and every statement the store runs, parameters always bound."""

from __future__ import annotations

from ._common import COLUMNS
from ._records import SPEND_MINUTE_S

# What a row counts against a budget ({} is "", "old." or "new."), and the minute of a time, as spend_minutes keeps
# it. reserve computes the window's first minute with the same division (minute_of), so a row is never in two.
_COUNTED = "max(coalesce({0}cost_usd, {0}reserved_usd), 0)"
_MINUTE = f"CAST({{}} / {SPEND_MINUTE_S} AS INTEGER)"
_ADD_SPEND = f"""INSERT INTO spend_minutes (principal, minute, usd)
                SELECT new.principal, {_MINUTE.format("new.created_at")}, {_COUNTED.format("new.")}
                WHERE {_COUNTED.format("new.")} > 0
                ON CONFLICT (principal, minute) DO UPDATE SET usd = usd + excluded.usd;"""
_TAKE_SPEND = f"""UPDATE spend_minutes SET usd = usd - {_COUNTED.format("old.")}
                WHERE {_COUNTED.format("old.")} > 0
                    AND principal = old.principal AND minute = {_MINUTE.format("old.created_at")};"""

# Migration N (list index N-1) moves the schema from version N-1 to N, so len(_MIGRATIONS) == SCHEMA_VERSION and
# version 2 is one more entry. Statements, not scripts: executescript() commits the open transaction first, and a
# migration must commit together with its version bump, or two processes opening an old file could both apply it.
_MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE meta (schema_version INTEGER NOT NULL)",
        "INSERT INTO meta (schema_version) VALUES (0)",
        # seq is the rowid under a name: VACUUM may renumber an unnamed rowid, and the full-text index refers to it.
        """CREATE TABLE generations (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            principal TEXT NOT NULL,
            api_base TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            request TEXT NOT NULL,
            model TEXT NOT NULL,
            prompt TEXT,
            inputs TEXT NOT NULL,
            state TEXT NOT NULL,
            task_id TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL,
            images TEXT NOT NULL,
            usage TEXT,
            cost_usd REAL,
            error TEXT,
            saved_files TEXT NOT NULL,
            delivered INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX generations_join ON generations (principal, request_hash, created_at)",
        "CREATE INDEX generations_task ON generations (task_id)",
        "CREATE INDEX generations_principal_time ON generations (principal, created_at DESC, id DESC)",
        "CREATE INDEX generations_time ON generations (created_at DESC, id DESC)",  # history of every principal
        "CREATE INDEX generations_submitting ON generations (updated_at) WHERE state = 'submitting'",
        # External content: the text lives once, in generations; the triggers keep the index in step.
        """CREATE VIRTUAL TABLE generations_fts USING fts5 (
            prompt, model, content = 'generations', content_rowid = 'seq'
        )""",
        """CREATE TRIGGER generations_fts_insert AFTER INSERT ON generations BEGIN
            INSERT INTO generations_fts (rowid, prompt, model) VALUES (new.seq, new.prompt, new.model);
        END""",
        """CREATE TRIGGER generations_fts_delete AFTER DELETE ON generations BEGIN
            INSERT INTO generations_fts (generations_fts, rowid, prompt, model)
                VALUES ('delete', old.seq, old.prompt, old.model);
        END""",
        """CREATE TRIGGER generations_fts_update AFTER UPDATE OF prompt, model ON generations BEGIN
            INSERT INTO generations_fts (generations_fts, rowid, prompt, model)
                VALUES ('delete', old.seq, old.prompt, old.model);
            INSERT INTO generations_fts (rowid, prompt, model) VALUES (new.seq, new.prompt, new.model);
        END""",
    ),
    # 2: spend control. reserved_usd is money held for a submission whose cost is not yet known; estimate_usd the
    # price it was reserved at. Rows from version 1 hold nothing.
    (
        "ALTER TABLE generations ADD COLUMN estimate_usd REAL",
        "ALTER TABLE generations ADD COLUMN reserved_usd REAL NOT NULL DEFAULT 0",
    ),
    # 3: each principal's spend by the minute of created_at (SPEND_MINUTE_S), so that a budget check sums a day of
    # minutes instead of reading a day of rows. A row counts max(coalesce(cost_usd, reserved_usd), 0); the triggers
    # keep the sums in step with every change to it, and the existing rows are summed in.
    (
        """CREATE TABLE spend_minutes (
            principal TEXT NOT NULL,
            minute INTEGER NOT NULL,
            usd REAL NOT NULL,
            PRIMARY KEY (principal, minute)
        ) WITHOUT ROWID""",
        f"""INSERT INTO spend_minutes (principal, minute, usd)
            SELECT principal, {_MINUTE.format("created_at")}, sum({_COUNTED.format("")}) FROM generations
            WHERE {_COUNTED.format("")} > 0 GROUP BY 1, 2""",
        f"""CREATE TRIGGER generations_spend_insert AFTER INSERT ON generations BEGIN
            {_ADD_SPEND}
        END""",
        f"""CREATE TRIGGER generations_spend_update AFTER UPDATE OF principal, created_at, cost_usd, reserved_usd
            ON generations
            WHEN old.principal IS NOT new.principal OR old.created_at IS NOT new.created_at
                OR {_COUNTED.format("old.")} IS NOT {_COUNTED.format("new.")}
        BEGIN
            {_TAKE_SPEND}
            {_ADD_SPEND}
        END""",
        f"""CREATE TRIGGER generations_spend_delete AFTER DELETE ON generations BEGIN
            {_TAKE_SPEND}
        END""",
    ),
    # 4: owned submissions. owner is the server process submitting the row, lease_until how long it is known to be
    # alive (renewed while it submits). Rows from version 3 have neither: start-up expiry ages them as before.
    (
        "ALTER TABLE generations ADD COLUMN owner TEXT",
        "ALTER TABLE generations ADD COLUMN lease_until REAL",
    ),
    # 5: MCP tasks kept whole in the ledger. cancelled_at is when a generation's task was cancelled (the generation
    # itself goes on: Qolaba cannot cancel), task_ttl_ms the retention its creator asked for. Rows from version 4 have
    # neither: their tasks were never cancelled here, and asked for no ttl.
    (
        "ALTER TABLE generations ADD COLUMN cancelled_at REAL",
        "ALTER TABLE generations ADD COLUMN task_ttl_ms INTEGER",
    ),
]

_COLUMNS = COLUMNS
_G_COLUMNS = ", ".join(f"g.{column}" for column in _COLUMNS.split(", "))
_JSON_COLUMNS = ("request", "inputs", "images", "usage", "saved_files")

_SQL_META_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
_SQL_VERSION = "SELECT schema_version FROM meta"
_SQL_SET_VERSION = "UPDATE meta SET schema_version = ?"
_SQL_INSERT = f"""INSERT INTO generations ({_COLUMNS}) VALUES (
    :id, :principal, :api_base, :request_hash, :request, :model, :prompt, :inputs, :state, :task_id, :created_at,
    :updated_at, :finished_at, :images, :usage, :cost_usd, :error, :saved_files, :delivered, :estimate_usd,
    :reserved_usd, :owner, :lease_until, :cancelled_at, :task_ttl_ms)"""
# The states are ACTIVE_STATES, plus a succeeded result nobody has received yet.
_SQL_JOINABLE = f"""SELECT {_COLUMNS} FROM generations
    WHERE principal = ? AND request_hash = ? AND api_base = ? AND created_at >= ?
      AND (state IN ('submitting', 'submitted', 'running') OR (state = 'succeeded' AND delivered = 0))
    ORDER BY created_at DESC LIMIT 1"""
# Of any age: an unknown row nobody has been warned about, or a submission whose owner's lease ran out.
_SQL_WARNABLE = f"""SELECT {_COLUMNS} FROM generations
    WHERE principal = ? AND request_hash = ? AND api_base = ?
      AND ((state = 'unknown' AND delivered = 0) OR (state = 'submitting' AND lease_until < ? AND owner IS NOT ?))
    ORDER BY created_at DESC LIMIT 1"""
_SQL_WARNED = """UPDATE generations SET state = 'unknown', delivered = 1, error = coalesce(error, ?), updated_at = ?
    WHERE id = ?"""
_SQL_RENEW = "UPDATE generations SET lease_until = ? WHERE owner = ? AND state = 'submitting'"
_SQL_GET = f"SELECT {_COLUMNS} FROM generations WHERE id = ?"
_SQL_LAST_DELIVERED = f"""SELECT {_COLUMNS} FROM generations
    WHERE principal = ? AND request_hash = ? AND api_base = ? AND state = 'succeeded' AND delivered = 1
      AND finished_at >= ?
    ORDER BY finished_at DESC LIMIT 1"""
_SQL_BY_TASK = f"""SELECT {_COLUMNS} FROM generations WHERE task_id = ? AND (? IS NULL OR principal = ?)
    ORDER BY created_at DESC LIMIT 1"""
# One static statement for any Changes: a NULL parameter keeps the column as it is.
_SQL_UPDATE = """UPDATE generations SET
    state = coalesce(:state, state), task_id = coalesce(:task_id, task_id),
    finished_at = coalesce(:finished_at, finished_at), images = coalesce(:images, images),
    usage = coalesce(:usage, usage), cost_usd = coalesce(:cost_usd, cost_usd), error = coalesce(:error, error),
    saved_files = coalesce(:saved_files, saved_files), updated_at = :now
    WHERE id = :id"""
_SQL_DELIVER = "UPDATE generations SET delivered = 1 WHERE id = ? AND delivered = 0"
# The states are ACTIVE_STATES: a task whose generation ended has a terminal status, which never changes.
_SQL_CANCEL_TASK = """UPDATE generations SET cancelled_at = ?
    WHERE id = ? AND cancelled_at IS NULL AND state IN ('submitting', 'submitted', 'running')"""
_SQL_TASK_TTL = "UPDATE generations SET task_ttl_ms = coalesce(task_ttl_ms, ?) WHERE id = ?"
_SQL_EXPIRE = """UPDATE generations SET state = 'unknown', error = coalesce(error, ?), updated_at = ?
    WHERE state = 'submitting' AND (lease_until < ? OR updated_at < ?)"""
_SQL_SPEND = "SELECT total(cost_usd) FROM generations WHERE principal = ? AND created_at >= ?"
# Spend control: what a row has spent is its cost once known, else the money it holds. The window is
# created_at > now - window, so a row stops counting at exactly created_at + window (Reservation.frees_at).
# The spend is the minutes after the window's first, whole, plus the rows of that first minute created after its
# start; less the row being reserved (its own minute counts it). frees_at walks the same, oldest first.
_SQL_OWNER = f"SELECT principal, {_MINUTE.format('created_at')}, {_COUNTED.format('')} FROM generations WHERE id = ?"
_SQL_MINUTES_TOTAL = "SELECT total(usd) FROM spend_minutes WHERE principal = ? AND minute > ?"
_SQL_MINUTES = "SELECT minute, usd FROM spend_minutes WHERE principal = ? AND minute > ? ORDER BY minute"
# The rows of one minute after a time (the bounds let the (principal, created_at) index find them).
_SQL_MINUTE_ROWS = f"""SELECT created_at, {_COUNTED.format("")} FROM generations
    WHERE principal = ? AND created_at > ? AND created_at < ? AND {_MINUTE.format("created_at")} = ? AND id <> ?
        AND {_COUNTED.format("")} > 0
    ORDER BY created_at"""
_SQL_RESERVE = "UPDATE generations SET estimate_usd = ?, reserved_usd = ?, updated_at = ? WHERE id = ?"
_SQL_SETTLE = """UPDATE generations SET cost_usd = ?, reserved_usd = 0, updated_at = ? WHERE id = ?"""
_SQL_TOUCH = "UPDATE generations SET updated_at = ? WHERE id = ?"
_SQL_RELEASE = "UPDATE generations SET reserved_usd = 0, updated_at = ? WHERE id = ?"
_SQL_SPEND_BY_MODEL = """SELECT model, count(CASE WHEN created_at > :day THEN 1 END),
        total(CASE WHEN created_at > :day THEN coalesce(cost_usd, reserved_usd) END),
        total(coalesce(cost_usd, reserved_usd))
    FROM generations WHERE (:principal IS NULL OR principal = :principal) AND created_at > :month GROUP BY model"""
_SQL_COUNT_MATCHES = "SELECT count(*) FROM (SELECT 1 FROM generations_fts WHERE generations_fts MATCH ? LIMIT ?)"
# history: {where} is the fragments below that the query's filters choose, joined with AND. Without a search, and
# for a search with many matches, a time index is walked newest first until the page is full (the unary + keeps
# the planner from starting from the matches instead). A search with few matches starts from them, in the order
# CROSS JOIN imposes, and sorts them: walking the index would read every row to find a handful.
_SQL_HISTORY = f"""SELECT {_G_COLUMNS} FROM generations AS g
    WHERE {{where}} ORDER BY g.created_at DESC, g.id DESC LIMIT ?"""
_SQL_HISTORY_FEW_MATCHES = f"""SELECT {_G_COLUMNS}
    FROM generations_fts CROSS JOIN generations AS g ON g.seq = generations_fts.rowid
    WHERE generations_fts MATCH ? AND {{where}} ORDER BY g.created_at DESC, g.id DESC LIMIT ?"""
_HISTORY_WHERE = {
    "many_matches": "+g.seq IN (SELECT rowid FROM generations_fts WHERE generations_fts MATCH ?)",
    "principal": "g.principal = ?",
    "model": "g.model = ?",
    "state": "g.state = ?",
    "since": "g.created_at >= ?",
    "until": "g.created_at < ?",
    "cursor": "(g.created_at, g.id) < (?, ?)",
}
