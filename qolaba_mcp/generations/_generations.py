"""The generations facade: run, record (when the ledger is on), deliver and look up generations; knows no MCP.

The tools call this and nothing below it. With the ledger off (``QOLABA_LEDGER_URL=off``) generations run bare:
no joins, no records, and history and spend say why there are none (``NoLedgerError``).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from urllib.parse import urlsplit

from pydantic import SecretStr

from .._config import Settings
from .._errors import QolabaError, TaskNotFoundError
from ..api._wire import GenerateRequest
from ..images._delivery import Delivered, Delivery, default_data_dir
from ..images._inputs import EarlierImage, InputError
from ..ledger import LedgerRow, LedgerStore, Query, default_ledger_url, open_ledger
from ..money._spend import Quote, SpendReport
from ._pacing import ProgressFn
from ._recorded import RECORD_PENDING, RecordedRunner, SpendLimits
from ._rows import Recorded
from ._runner import Runner

log = logging.getLogger("qolaba_mcp.generations")

NO_HISTORY = "No history is kept: the ledger is off (QOLABA_LEDGER_URL=off)."
NO_SPEND = "No spend is tracked: the ledger is off (QOLABA_LEDGER_URL=off)."


class NoLedgerError(QolabaError):
    """History or spend asked of a server whose ledger is off."""


class Generations:
    """Generations for the tools: the runner, the ledger around it when there is one, and image delivery."""

    def __init__(
        self,
        *,
        settings: Settings,
        runner: Runner,
        recorded: RecordedRunner | None,
        delivery: Delivery,
        save_by_default: bool,
    ) -> None:
        self._settings = settings
        self._runner = runner
        self._recorded = recorded
        self.delivery = delivery
        self._save_by_default = save_by_default

    async def generate(
        self,
        request: GenerateRequest,
        *,
        quote: Quote,
        wait_seconds: float,
        on_progress: ProgressFn | None = None,
        api_key: SecretStr | None = None,
        inputs: list[str] | None = None,
    ) -> Recorded:
        """A new generation (or, with the ledger, the identical one it joins), estimated at ``quote``."""
        if self._recorded is None:
            bare = await self._runner.generate(
                request, wait_seconds=wait_seconds, on_progress=on_progress, api_key=api_key
            )
            return Recorded(**bare.model_dump(exclude={"estimate_usd"}), estimate_usd=quote.estimate_usd)
        # the ledger holds the estimate (a joined generation's is the one recorded for it)
        limits = SpendLimits(
            quote=quote, daily_budget=self._settings.daily_budget_usd, per_call_cap=self._settings.max_cost_per_call_usd
        )
        return await self._recorded.generate(
            request, wait_seconds=wait_seconds, on_progress=on_progress, api_key=api_key, limits=limits, inputs=inputs
        )

    async def get(
        self,
        task_id: str,
        *,
        wait_seconds: float,
        on_progress: ProgressFn | None = None,
        api_key: SecretStr | None = None,
    ) -> Recorded:
        """A task by id (the caller's only), waited for up to ``wait_seconds``; the ledger answers finished ones."""
        if self._recorded is not None:
            return await self._recorded.get_task(
                task_id, wait_seconds=wait_seconds, on_progress=on_progress, api_key=api_key
            )
        bare = await self._runner.get_task(task_id, wait_seconds=wait_seconds, on_progress=on_progress, api_key=api_key)
        return Recorded(**bare.model_dump())

    async def task_row(self, task_id: str, *, api_key: SecretStr | None) -> LedgerRow | None:
        """The caller's ledger row for an API task id (None: not the caller's, unknown, or the ledger is off)."""
        if self._recorded is None:
            return None
        return await self._recorded.ledger.by_task(task_id, principal=self._recorded.principal(api_key))

    async def cancel_task(self, row_id: str, *, now: float) -> tuple[LedgerRow, bool]:
        """Record that a generation's MCP task was cancelled (the generation goes on: Qolaba cannot cancel it), at
        once rather than queued: the caller is told only once it is kept. See ``LedgerStore.cancel_task``."""
        return await self._task_ledger().cancel_task(row_id, now=now)

    async def keep_task_ttl(self, row_id: str, *, ttl_ms: int) -> LedgerRow:
        """Record the ttl asked for a generation's MCP task, at once. See ``LedgerStore.keep_task_ttl``."""
        return await self._task_ledger().keep_task_ttl(row_id, ttl_ms=ttl_ms)

    def _task_ledger(self) -> LedgerStore:
        if self._recorded is None:  # a task is a ledger row: without the ledger there are none
            raise NoLedgerError("There are no tasks: the ledger is off (QOLABA_LEDGER_URL=off).")
        return self._recorded.ledger

    async def finish(
        self, generation: Recorded, *, save: bool | None, wait_seconds: float, started: float | None = None
    ) -> tuple[Recorded, Delivered | None]:
        """Deliver a finished generation's images (previews, files) and record that the caller has it.

        Delivery is a courtesy on top of a paid result: if it fails outright, the result still comes back, with a
        note. It gets what is left of the call's wait (from ``started``, a ``time.monotonic()``); files saved after
        that are recorded in the ledger, for get_task to show."""
        recorded = self._recorded
        row_id = generation.row_id if recorded is not None and generation.status == "SUCCESS" else None
        delivered: Delivered | None = None
        if generation.status == "SUCCESS" and generation.images:
            known = await recorded.saved_files(row_id) if recorded is not None and row_id is not None else []
            on_saved = None
            if recorded is not None and row_id is not None:

                async def on_saved(
                    index: int, path: str, recorded: RecordedRunner = recorded, row: str = row_id
                ) -> None:
                    await recorded.add_saved(row, [None] * index + [path])

            deadline = None if started is None else started + wait_seconds - time.monotonic()
            try:
                delivered = await self.delivery.deliver(
                    generation.task_id,
                    generation.images,
                    save=self._save_by_default if save is None else save,
                    deadline=deadline,
                    known=known,
                    on_saved=on_saved,
                )
            except Exception as exc:
                log.exception("delivering the images of %s failed", generation.task_id)
                delivered = Delivered(
                    notes=[f"no previews or saved files: delivery failed ({type(exc).__name__}); the URLs stand"]
                )
        if recorded is not None and row_id is not None:
            if delivered is not None and any(delivered.saved):
                delivered.saved = await recorded.add_saved(row_id, delivered.saved)
            await recorded.delivered(row_id)
            if recorded.pending(row_id) and RECORD_PENDING not in generation.notes:
                generation = generation.model_copy(update={"notes": [*generation.notes, RECORD_PENDING]})
        return generation, delivered

    async def earlier_image(self, task_id: str, index: int, *, api_key: SecretStr | None) -> EarlierImage:
        """Image ``index`` of the caller's finished task, as an input to a new one (an InputError says why not)."""
        try:
            generation = await self.get(task_id, wait_seconds=0, api_key=api_key)
        except TaskNotFoundError:
            raise InputError(f"no task {task_id!r} is known (check the task_id, or generate the image again)") from None
        except QolabaError as exc:
            raise InputError(f"task {task_id} could not be looked up: {exc.message}") from exc
        if generation.status != "SUCCESS":
            raise InputError(f"task {task_id} is {generation.status}, so it has no images to use yet")
        if index >= len(generation.images):
            last = len(generation.images) - 1
            raise InputError(f"task {task_id} has images 0 to {last}; there is no image {index}")
        finished, saved = None, None
        if self._recorded is not None and generation.row_id is not None:
            row = await self._recorded.ledger.get(generation.row_id)
            if row is not None:
                finished = row.finished_at
                saved = row.saved_files[index] if index < len(row.saved_files) else None
        return EarlierImage(url=generation.images[index].url, finished_at=finished, saved_file=saved)

    async def history(self, query: Query, *, api_key: SecretStr | None) -> tuple[list[LedgerRow], str | None]:
        """The caller's generations matching ``query`` (another caller's are never visible), and the next cursor.

        A LedgerError or ValueError (a cursor that is not one of ours) when the ledger cannot answer."""
        if self._recorded is None:
            raise NoLedgerError(NO_HISTORY)
        principal = self._recorded.principal(api_key)
        return await self._recorded.history(query.model_copy(update={"principal": principal}))

    async def spend(self, *, api_key: SecretStr | None, model: str | None = None) -> SpendReport:
        """The caller's spend and the limits that apply (``model``: that model's spend alone)."""
        if self._recorded is None:
            raise NoLedgerError(NO_SPEND)
        principal = self._recorded.principal(api_key)
        report = await self._recorded.ledger.spend_report(principal=principal, now=time.time())
        return SpendReport.build(report, self._settings, model=model)

    async def spent_24h(self, *, api_key: SecretStr | None) -> float | None:
        """What the caller spent (or holds) in the last 24 hours; None with the ledger off."""
        if self._recorded is None:
            return None
        return (await self.spend(api_key=api_key)).last_24h.total_usd


async def open_configured_ledger(settings: Settings) -> LedgerStore | None:
    """The configured ledger, opened (schema created or migrated); None when it is turned off."""
    url = settings.ledger_url or default_ledger_url(default_data_dir(), name=_default_ledger_name(settings))
    if url.strip().lower() == "off":
        return None
    ledger = open_ledger(url)
    await ledger.open()
    return ledger


def _default_ledger_name(settings: Settings) -> str:
    """An API on this machine (a sandbox, a test double) gets a ledger of its own: its generations cost nothing,
    so they must never show up as money spent, or count against a budget, in the real ledger."""
    host = urlsplit(settings.api_base_url).hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    return "sandbox-ledger.db" if local else "ledger.db"
