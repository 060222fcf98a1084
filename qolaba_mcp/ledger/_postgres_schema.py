"""The PostgreSQL ledger's SQL: its numbered migrations and every statement the store runs, parameters always bound."""

from __future__ import annotations

from ._common import COLUMNS
from ._records import SPEND_MINUTE_S

# What a row counts against a budget ({} is "", "OLD." or "NEW."), and the minute of a time, as spend_minutes keeps
# it. reserve computes the window's first minute with the same division (minute_of), so a row is never in two.
_COUNTED = "greatest(coalesce({0}cost_usd, {0}reserved_usd), 0)"
_MINUTE = f"floor({{}} / {SPEND_MINUTE_S})::bigint"

# Migration N (list index N-1) moves the schema from version N-1 to N, so len(_MIGRATIONS) == SCHEMA_VERSION and
# version 2 is one more entry. Each runs in the transaction that bumps the version (PostgreSQL's DDL is
# transactional), under _SQL_SCHEMA_LOCK.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (schema_version integer NOT NULL);
    INSERT INTO meta (schema_version) VALUES (0);
    CREATE TABLE generations (
        id text PRIMARY KEY,
        principal text NOT NULL,
        api_base text NOT NULL,
        request_hash text NOT NULL,
        request jsonb NOT NULL,
        model text NOT NULL,
        prompt text,
        inputs jsonb NOT NULL,
        state text NOT NULL,
        task_id text,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        finished_at double precision,
        images jsonb NOT NULL,
        usage jsonb,
        cost_usd double precision,
        error text,
        saved_files jsonb NOT NULL,
        delivered boolean NOT NULL DEFAULT false,
        -- The words search_words (and SQLite's tokenizer) see: 'simple' neither stems nor drops stop words, and
        -- blanking the characters that join words into one token for the default parser ("1.5", "x@y.com",
        -- "/a/b", "<b>") leaves runs of letters and digits.
        search tsvector GENERATED ALWAYS AS (
            to_tsvector('simple', translate(coalesce(prompt, '') || ' ' || model, '-./@:_<>&', '         '))
        ) STORED
    );
    CREATE INDEX generations_join ON generations (principal, request_hash, created_at);
    CREATE INDEX generations_task ON generations (task_id);
    CREATE INDEX generations_principal_time ON generations (principal, created_at DESC, id DESC);
    CREATE INDEX generations_time ON generations (created_at DESC, id DESC);
    CREATE INDEX generations_submitting ON generations (updated_at) WHERE state = 'submitting';
    CREATE INDEX generations_search ON generations USING gin (search);
    """,
    # 2: spend control. reserved_usd is money held for a submission whose cost is not yet known; estimate_usd the
    # price it was reserved at. Rows from version 1 hold nothing.
    """
    ALTER TABLE generations ADD COLUMN estimate_usd double precision;
    ALTER TABLE generations ADD COLUMN reserved_usd double precision NOT NULL DEFAULT 0;
    """,
    # 3: each principal's spend by the minute of created_at (SPEND_MINUTE_S), so that a budget check sums a day of
    # minutes instead of reading a day of rows. A row counts greatest(coalesce(cost_usd, reserved_usd), 0); the
    # trigger keeps the sums in step with every change to it, and the existing rows are summed in.
    f"""
    CREATE TABLE spend_minutes (
        principal text NOT NULL,
        minute bigint NOT NULL,
        usd double precision NOT NULL,
        PRIMARY KEY (principal, minute)
    );
    INSERT INTO spend_minutes (principal, minute, usd)
        SELECT principal, {_MINUTE.format("created_at")}, sum({_COUNTED.format("")}) FROM generations
        WHERE {_COUNTED.format("")} > 0 GROUP BY 1, 2;
    CREATE FUNCTION generations_spend() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND OLD.principal = NEW.principal AND OLD.created_at = NEW.created_at
                AND {_COUNTED.format("OLD.")} = {_COUNTED.format("NEW.")} THEN
            RETURN NULL;
        END IF;
        IF TG_OP <> 'INSERT' AND {_COUNTED.format("OLD.")} > 0 THEN
            UPDATE spend_minutes SET usd = usd - {_COUNTED.format("OLD.")}
                WHERE principal = OLD.principal AND minute = {_MINUTE.format("OLD.created_at")};
        END IF;
        IF TG_OP <> 'DELETE' AND {_COUNTED.format("NEW.")} > 0 THEN
            INSERT INTO spend_minutes (principal, minute, usd)
                VALUES (NEW.principal, {_MINUTE.format("NEW.created_at")}, {_COUNTED.format("NEW.")})
                ON CONFLICT (principal, minute) DO UPDATE SET usd = spend_minutes.usd + excluded.usd;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER generations_spend AFTER INSERT OR DELETE OR UPDATE OF principal, created_at, cost_usd, reserved_usd
        ON generations FOR EACH ROW EXECUTE FUNCTION generations_spend();
    """,
    # 4: owned submissions. owner is the server process submitting the row, lease_until how long it is known to be
    # alive (renewed while it submits). Rows from version 3 have neither: start-up expiry ages them as before.
    """
    ALTER TABLE generations ADD COLUMN owner text;
    ALTER TABLE generations ADD COLUMN lease_until double precision;
    """,
    # 5: MCP tasks kept whole in the ledger. cancelled_at is when a generation's task was cancelled (the generation
    # itself goes on: Qolaba cannot cancel), task_ttl_ms the retention its creator asked for. Rows from version 4 have
    # neither: their tasks were never cancelled here, and asked for no ttl.
    """
    ALTER TABLE generations ADD COLUMN cancelled_at double precision;
    ALTER TABLE generations ADD COLUMN task_ttl_ms bigint;
    """,
]

_COLUMNS = COLUMNS
_FIELDS = tuple(_COLUMNS.split(", "))

_SQL_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('qolaba-mcp ledger schema'))"
_SQL_META_EXISTS = "SELECT to_regclass('meta') IS NOT NULL"
_SQL_VERSION = "SELECT schema_version FROM meta"
_SQL_SET_VERSION = "UPDATE meta SET schema_version = $1"
_SQL_INSERT = f"INSERT INTO generations ({_COLUMNS}) VALUES ({', '.join(f'${n}' for n in range(1, len(_FIELDS) + 1))})"
_SQL_REQUEST_LOCK = "SELECT pg_advisory_xact_lock(hashtext($1))"
# The states are ACTIVE_STATES, plus a succeeded result nobody has received yet.
_SQL_JOINABLE = f"""SELECT {_COLUMNS} FROM generations
    WHERE principal = $1 AND request_hash = $2 AND api_base = $3 AND created_at >= $4
      AND (state IN ('submitting', 'submitted', 'running') OR (state = 'succeeded' AND NOT delivered))
    ORDER BY created_at DESC LIMIT 1"""
# Of any age: an unknown row nobody has been warned about, or a submission whose owner's lease ran out.
_SQL_WARNABLE = f"""SELECT {_COLUMNS} FROM generations
    WHERE principal = $1 AND request_hash = $2 AND api_base = $3
      AND ((state = 'unknown' AND NOT delivered)
           OR (state = 'submitting' AND lease_until < $4 AND owner IS DISTINCT FROM $5))
    ORDER BY created_at DESC LIMIT 1"""
_SQL_WARNED = f"""UPDATE generations SET state = 'unknown', delivered = true, error = coalesce(error, $2),
    updated_at = $3 WHERE id = $1 RETURNING {_COLUMNS}"""
_SQL_RENEW = "UPDATE generations SET lease_until = $2 WHERE owner = $1 AND state = 'submitting'"
_SQL_GET = f"SELECT {_COLUMNS} FROM generations WHERE id = $1"
_SQL_LAST_DELIVERED = f"""SELECT {_COLUMNS} FROM generations
    WHERE principal = $1 AND request_hash = $2 AND api_base = $3 AND state = 'succeeded' AND delivered
      AND finished_at >= $4
    ORDER BY finished_at DESC LIMIT 1"""
_SQL_BY_TASK = f"""SELECT {_COLUMNS} FROM generations WHERE task_id = $1 AND ($2::text IS NULL OR principal = $2)
    ORDER BY created_at DESC LIMIT 1"""
# One static statement for any Changes: a NULL parameter keeps the column as it is.
_SQL_UPDATE = f"""UPDATE generations SET
    state = coalesce($2, state), task_id = coalesce($3, task_id), finished_at = coalesce($4, finished_at),
    images = coalesce($5, images), usage = coalesce($6, usage), cost_usd = coalesce($7, cost_usd),
    error = coalesce($8, error), saved_files = coalesce($9, saved_files), updated_at = $10
    WHERE id = $1 RETURNING {_COLUMNS}"""
_SQL_DELIVER = "UPDATE generations SET delivered = true WHERE id = $1 AND NOT delivered"
# The states are ACTIVE_STATES: a task whose generation ended has a terminal status, which never changes. One
# statement: of two replicas cancelling at once, the second finds cancelled_at set and changes nothing.
_SQL_CANCEL_TASK = f"""UPDATE generations SET cancelled_at = $2
    WHERE id = $1 AND cancelled_at IS NULL AND state IN ('submitting', 'submitted', 'running') RETURNING {_COLUMNS}"""
_SQL_TASK_TTL = f"UPDATE generations SET task_ttl_ms = coalesce(task_ttl_ms, $2) WHERE id = $1 RETURNING {_COLUMNS}"
_SQL_EXPIRE = """UPDATE generations SET state = 'unknown', error = coalesce(error, $3), updated_at = $1
    WHERE state = 'submitting' AND (lease_until < $1 OR updated_at < $2)"""
_SQL_ANALYZE = "ANALYZE generations"
_SQL_SPEND = "SELECT coalesce(sum(cost_usd), 0) FROM generations WHERE principal = $1 AND created_at >= $2"
# Spend control: what a row has spent is its cost once known, else the money it holds. The window is
# created_at > now - window, so a row stops counting at exactly created_at + window (Reservation.frees_at). Every
# reserve of one principal, on any replica, takes _SQL_SPEND_LOCK first: one reads and holds at a time.
_SQL_SPEND_LOCK = "SELECT pg_advisory_xact_lock(hashtext('spend ' || $1))"
# The spend is the minutes after the window's first, whole, plus the rows of that first minute created after its
# start; less the row being reserved (its own minute counts it). frees_at walks the same, oldest first.
_SQL_OWNER = f"SELECT principal, {_MINUTE.format('created_at')}, {_COUNTED.format('')} FROM generations WHERE id = $1"
_SQL_MINUTES_TOTAL = "SELECT coalesce(sum(usd), 0) FROM spend_minutes WHERE principal = $1 AND minute > $2"
_SQL_MINUTES = "SELECT minute, usd FROM spend_minutes WHERE principal = $1 AND minute > $2 ORDER BY minute"
# The rows of one minute after a time (the bounds let the (principal, created_at) index find them).
_SQL_MINUTE_ROWS = f"""SELECT created_at, {_COUNTED.format("")} FROM generations
    WHERE principal = $1 AND created_at > $2 AND created_at < $3 AND {_MINUTE.format("created_at")} = $4
        AND id <> $5 AND {_COUNTED.format("")} > 0
    ORDER BY created_at"""
_SQL_RESERVE = "UPDATE generations SET estimate_usd = $2, reserved_usd = $2, updated_at = $3 WHERE id = $1"
_SQL_SETTLE = (
    f"UPDATE generations SET cost_usd = $2, reserved_usd = 0, updated_at = $3 WHERE id = $1 RETURNING {_COLUMNS}"
)
_SQL_TOUCH = f"UPDATE generations SET updated_at = $2 WHERE id = $1 RETURNING {_COLUMNS}"
_SQL_RELEASE = f"UPDATE generations SET reserved_usd = 0, updated_at = $2 WHERE id = $1 RETURNING {_COLUMNS}"
_SQL_SPEND_BY_MODEL = """SELECT model, count(*) FILTER (WHERE created_at > $2),
        coalesce(sum(coalesce(cost_usd, reserved_usd)) FILTER (WHERE created_at > $2), 0),
        coalesce(sum(coalesce(cost_usd, reserved_usd)), 0)
    FROM generations WHERE ($1::text IS NULL OR principal = $1) AND created_at > $3 GROUP BY model"""
# history: its WHERE clause is these fragments, chosen by the query's filters and joined with AND; {} is the
# number of the fragment's first parameter.
_SQL_HISTORY = f"SELECT {_COLUMNS} FROM generations WHERE {{where}} ORDER BY created_at DESC, id DESC LIMIT ${{limit}}"
_HISTORY_WHERE = {
    "search": "search @@ to_tsquery('simple', ${})",
    "principal": "principal = ${}",
    "model": "model = ${}",
    "state": "state = ${}",
    "since": "created_at >= ${}",
    "until": "created_at < ${}",
    "cursor": "(created_at, id) < (${}, ${})",
}
