"""What both ledger backends share: the row's columns, and about history queries, search words, the prefix rule
and paging cursors.

It imports only the standard library and the records, so each backend uses it without loading the other.
"""

from __future__ import annotations

import base64
import json
import re

from ._records import LedgerRow

# A row's columns in the order both backends select and insert them (each backend's schema adds its own types).
COLUMNS = (
    "id, principal, api_base, request_hash, request, model, prompt, inputs, state, task_id, created_at, updated_at,"
    " finished_at, images, usage, cost_usd, error, saved_files, delivered, estimate_usd, reserved_usd, owner,"
    " lease_until, cancelled_at, task_ttl_ms"
)
MAX_SEARCH_WORDS = 16  # a longer search keeps its first words: enough to find anything, bounded cost
MIN_PREFIX = 2  # a last word this long also matches as a prefix; "s*" would merge the lists of every word in s

_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits: how both full-text indexes split text into words


def search_words(text: str) -> list[str]:
    """The words of a user's search; punctuation and operators (quotes, ``OR``, ``-``) are only separators."""
    return _WORD.findall(text)[:MAX_SEARCH_WORDS]


def encode_cursor(row: LedgerRow) -> str:
    """The opaque cursor of the page after ``row``: its (created_at, id), where keyset paging resumes."""
    return base64.urlsafe_b64encode(json.dumps([row.created_at, row.id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (created_at, id) in a cursor from ``encode_cursor``; ValueError for anything else."""
    try:
        created_at, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):  # bad base64, bad JSON, not a pair
        created_at = row_id = None
    if not isinstance(created_at, int | float) or not isinstance(row_id, str):
        raise ValueError("not a history cursor from this ledger; start again without one")
    return float(created_at), row_id
