"""The CLI's reports from the ledger: the history table and the spend, as text."""

from __future__ import annotations

import json
import time

from ._config import Settings
from ._identity import subject_of
from .generations._generations import open_configured_ledger
from .ledger import LedgerStore, Query
from .ledger._records import REPORT_MONTH_S
from .money._spend import (
    SpendReport,
    usd,
)
from .server._results import (
    history_row,
)


async def history_table(settings: Settings, search: str | None, limit: int) -> str:
    """The ledger's newest generations (every principal: the ledger is the local user's) as a text table."""
    ledger = await open_configured_ledger(settings)
    if ledger is None:
        return "The ledger is off (QOLABA_LEDGER_URL=off): no history is kept."
    try:
        rows, _ = await ledger.history(Query(search=search, limit=limit))
    finally:
        await ledger.close()
    if not rows:
        return "No generations" + (f" match {search!r}." if search else " yet.")
    lines = [f"{'when (UTC)':<20} {'status':<10} {'model':<26} {'img':>3} {'cost $':>7}  task_id / prompt"]
    for row in map(history_row, rows):
        cost = f"{row.cost_usd:.3f}" if row.cost_usd is not None else "-"
        lines.append(f"{row.when:<20} {row.status:<10} {row.model[:26]:<26} {row.images:>3} {cost:>7}  {row.task_id}")
        lines.append(f"{'':<70}{row.prompt or '(no prompt)'}")
        lines += [f"{'':<70}file: {path}" for path in row.saved_files]
        lines += [f"{'':<70}from {made_from[:200]}" for made_from in row.inputs]
    return "\n".join(lines)


async def spend_text(settings: Settings, as_json: bool = False) -> str:
    """The ledger's spend (every principal) and the limits, as text or JSON; then each signed-in person's (OAuth),
    by subject: the budget applies to each of them."""
    ledger = await open_configured_ledger(settings)
    if ledger is None:
        return "The ledger is off (QOLABA_LEDGER_URL=off): no spend is recorded."
    now = time.time()
    try:
        report = SpendReport.build(await ledger.spend_report(principal=None, now=now), settings)
        people = {}
        for principal in await _people(ledger, since=now - REPORT_MONTH_S):
            spent = SpendReport.build(await ledger.spend_report(principal=principal, now=now), settings)
            people[principal] = spent
    finally:
        await ledger.close()
    if as_json:
        document = report.model_dump(mode="json")
        if people:
            document["people"] = [
                {"subject": subject_of(principal), "issuer": principal.split(" ")[1], **spent.model_dump(mode="json")}
                for principal, spent in people.items()
            ]
        return json.dumps(document, indent=2)
    lines = [report.text()]
    if people:
        lines.append("By person (OAuth subject, issuer): last 24 hours / last 30 days.")
        for principal, spent in people.items():
            lines.append(
                f"  {subject_of(principal)} ({principal.split(' ')[1]}): "
                f"{usd(spent.last_24h.total_usd)} / {usd(spent.last_30d.total_usd)}"
            )
    return "\n".join(lines)


async def _people(ledger: LedgerStore, *, since: float) -> list[str]:
    """The signed-in people (principals from OAuth) with generations since ``since``, in order of first seen."""
    found: dict[str, None] = {}
    cursor = None
    while True:
        rows, cursor = await ledger.history(Query(since=since, limit=200, cursor=cursor))
        found.update((row.principal, None) for row in rows if subject_of(row.principal) is not None)
        if cursor is None:
            return list(found)
