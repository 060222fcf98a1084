"""Between generations and ledger rows: what a generation changes in its row, and a row read back as a result."""

from __future__ import annotations

import time
from typing import Any

from .._errors import (
    AuthenticationError,
    BadRequestError,
    MissingApiKeyError,
    NetworkError,
    QolabaError,
    RateLimitError,
)
from ..api._wire import ImageOutput, Usage
from ..ledger import (
    Changes,
    ImageRecord,
    LedgerRow,
    LedgerState,
)
from ._runner import Generation, Status

# The ledger has no seed column: the seed the API reported is kept with the usage it reported, under this key.
_SEED = "seed"


_UNKNOWN_NEXT = (
    "The submission was sent but its answer was never recorded (the server stopped or the connection broke), so "
    "whether a task exists is unknown. Check the Qolaba dashboard before retrying: a retry may be a second paid "
    "generation."
)


class Recorded(Generation):
    """A generation as the facade answers it: its ledger row (None with the ledger off, or for a task the ledger
    does not hold), ``joined`` when this call joined an identical earlier one."""

    row_id: str | None = None
    joined: bool = False


def without_image_bytes(body: dict[str, Any]) -> dict[str, Any]:
    """The request as the ledger keeps it: a ``data:`` URI (a local file's bytes) becomes a short placeholder."""

    def short(value: Any) -> Any:
        if isinstance(value, str) and value[:5].lower() == "data:":
            return f"{value[: value.find(',') + 1 or 40][:60]}... ({len(value)} characters, not kept)"
        return value

    kept = dict(body)
    if isinstance(kept.get("image_urls"), list):
        kept["image_urls"] = [short(url) for url in kept["image_urls"]]
    if isinstance(kept.get("reference_images"), list):
        kept["reference_images"] = [
            {**ref, "url": short(ref.get("url"))} if isinstance(ref, dict) else ref for ref in kept["reference_images"]
        ]
    if "mask_url" in kept:
        kept["mask_url"] = short(kept["mask_url"])
    return kept


def changes_of(generation: Generation) -> Changes:
    state: LedgerState = "succeeded" if generation.status == "SUCCESS" else "running"
    if generation.status == "FAILED":
        state = "failed"
    usage = generation.usage.model_dump(mode="json", exclude_none=True) if generation.usage else None
    if generation.seed is not None:  # the seed the API used (chosen by it when none was asked for)
        usage = {**(usage or {}), _SEED: generation.seed}
    return Changes(
        state=state,
        task_id=generation.task_id,
        finished_at=time.time() if generation.done else None,
        images=_images(generation) if generation.done else None,
        usage=usage,
        cost_usd=generation.usage.cost_usd if generation.usage else None,
        error=generation.error,
    )


def _images(generation: Generation) -> list[ImageRecord]:
    return [
        ImageRecord(**image.model_dump(include={"url", "width", "height", "content_type"}))
        for image in generation.images
    ]


def failure_changes(exc: QolabaError, *, task_sent: bool) -> Changes:
    """What a failed call leaves in the record: refused (nothing created), or unknown (it may have been created)."""
    refused = isinstance(exc, BadRequestError | MissingApiKeyError | RateLimitError) or (
        isinstance(exc, NetworkError) and not exc.request_sent
    )
    if isinstance(exc, AuthenticationError) and not task_sent:
        refused = True
    if exc.task_id is not None:
        return Changes(state="submitted", task_id=exc.task_id)
    if refused:
        return Changes(state="failed", error=exc.message[:500], finished_at=time.time())
    return Changes(state="unknown", error=exc.message[:500])


def row_seed(row: LedgerRow) -> int | None:
    """The seed a generation used: the one the API reported, else the one asked for."""
    for seed in ((row.usage or {}).get(_SEED), row.request.get("seed")):
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    return None


def warning_of(row: LedgerRow) -> Recorded:
    """What a retry is told instead of submitting when an identical earlier submission may have been charged."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(row.created_at))
    task = f" (task {row.task_id})" if row.task_id else ""
    why = (row.error or "reason unknown")[:200]
    text = (
        f"Nothing was submitted: an identical generate_image call at {when} (ledger row {row.id}{task}) was sent to "
        f"the Qolaba API but its answer was never recorded ({why}), so it may have been "
        "charged. Check the Qolaba dashboard for it first. To generate anyway, call generate_image again with the "
        "same arguments (this warning is given once per such call) or change an argument such as the seed."
    )
    found = from_row(row, joined=False)
    return found.model_copy(update={"notes": [], "error": text})


def result_status(state: LedgerState) -> Status:
    """A ledger state in the words results use: agents see one status vocabulary (an unfinished one is PENDING)."""
    return _RESULT_STATUS.get(state, "PENDING")


_RESULT_STATUS: dict[str, Status] = {"succeeded": "SUCCESS", "failed": "FAILED", "unknown": "UNKNOWN"}


def from_row(row: LedgerRow, *, joined: bool) -> Recorded:
    """A result from the record alone (the task finished, or the API no longer knows it)."""
    status = result_status(row.state)
    billing = {key: value for key, value in (row.usage or {}).items() if key != _SEED}
    usage = Usage.model_validate(billing) if billing else None
    notes = []
    if row.state == "unknown":
        notes.append(_UNKNOWN_NEXT)
    if row.state == "submitting":
        notes.append("an identical call is submitting this generation; call generate_image again to join it")
    return Recorded(
        task_id=row.task_id,
        status=status,
        model=row.model,
        prompt=row.prompt,
        seed=row_seed(row),
        images=[ImageOutput(**image.model_dump()) for image in row.images],
        usage=usage,
        error=row.error if row.state != "succeeded" else None,
        elapsed_seconds=0.0,
        notes=notes,
        estimate_usd=row.estimate_usd,
        row_id=row.id,
        joined=joined,
    )
