"""The CLI's reports from the ledger: the history table and the spend, as text."""

from __future__ import annotations

import time

from ._config import Settings
from .generations._generations import open_configured_ledger
from .ledger import Query
from .money._spend import (
    SpendReport,
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
    """The ledger's spend (every principal: the ledger is the local user's) and the limits, as text or JSON."""
    ledger = await open_configured_ledger(settings)
    if ledger is None:
        return "The ledger is off (QOLABA_LEDGER_URL=off): no spend is recorded."
    try:
        report = SpendReport.build(await ledger.spend_report(principal=None, now=time.time()), settings)
    finally:
        await ledger.close()
    return report.model_dump_json(indent=2) if as_json else report.text()
