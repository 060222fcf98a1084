"""What the tools share for the server's life (AppContext), and the configured ledger opened."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
from mcp.types import (
    CallToolResult,
)

from .._config import Settings
from ..api._catalog import Catalog
from ..api._live import LiveCatalog
from ..generations._recorded import RECORD_PENDING, RecordedRunner
from ..generations._runner import Generation, Runner
from ..images._delivery import Delivered, Delivery, default_data_dir
from ..ledger import LedgerStore, default_ledger_url, open_ledger
from ._results import (
    generation_result,
)

log = logging.getLogger("qolaba_mcp.server")


class IssuedLinks:
    """The image URLs this process has put in results, newest kept: the http(s) links it will read back."""

    def __init__(self, limit: int = 10_000) -> None:
        self._urls: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def add(self, urls: Iterable[str]) -> None:
        for url in urls:
            self._urls[url] = None
            self._urls.move_to_end(url)
        while len(self._urls) > self._limit:
            self._urls.popitem(last=False)

    def __contains__(self, url: object) -> bool:
        return url in self._urls


@dataclass(frozen=True, kw_only=True)
class AppContext:
    """What the tools share for the life of the server process, built in its lifespan."""

    settings: Settings
    jobs: Runner
    delivery: Delivery
    catalog: Catalog  # the built-in catalogue with the models file: what LiveCatalog falls back to
    prices: LiveCatalog  # the catalogue with the live model list merged in: prices and published limits
    save_by_default: bool
    local_inputs: bool = False  # local files as image inputs: stdio only (over HTTP the server's disk is not yours)
    input_roots: list[Path] = field(default_factory=list)
    catalog_warning: str | None = None
    links: IssuedLinks = field(default_factory=IssuedLinks)
    # list_models answers by (capability, warnings): the catalogue they were made from, their text and structure
    listings: dict[tuple[str | None, tuple[str, ...]], tuple[Catalog, str, dict[str, Any]]] = field(
        default_factory=dict
    )
    tracked: RecordedRunner | None = None  # None when QOLABA_LEDGER_URL=off
    # the gallery's previews: decoded a few at a time, whatever an app asks for at once
    gallery_decodes: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(2))

    @property
    def runner(self) -> Runner | RecordedRunner:
        """What runs generations: the ledger-keeping runner, or the bare one with the ledger off."""
        return self.tracked or self.jobs

    async def finish(
        self,
        generation: Generation,
        *,
        save: bool | None,
        wait_seconds: float,
        links: bool = True,
        started: float | None = None,
    ) -> CallToolResult:
        """Deliver a finished generation's images (previews, files) and shape the tool result.

        Delivery is a courtesy on top of a paid result: if it fails outright, the result still comes back, with
        its task_id, every image URL and a note. It gets what is left of the call's wait (from ``started``, a
        ``time.monotonic()``); files saved after that are recorded in the ledger, for get_task to show.
        """
        delivered: Delivered | None = None
        row_id = getattr(generation, "row_id", None)
        tracked = self.tracked if row_id is not None and generation.status == "SUCCESS" else None
        if generation.status == "SUCCESS" and generation.images:
            should_save = self.save_by_default if save is None else save
            known = await tracked.saved_files(row_id) if tracked is not None and row_id is not None else []
            on_saved = None
            if tracked is not None and row_id is not None:

                async def on_saved(index: int, path: str, tracked: RecordedRunner = tracked, row: str = row_id) -> None:
                    await tracked.add_saved(row, [None] * index + [path])

            deadline = None if started is None else started + wait_seconds - time.monotonic()
            try:
                delivered = await self.delivery.deliver(
                    generation.task_id,
                    generation.images,
                    save=should_save,
                    deadline=deadline,
                    known=known,
                    on_saved=on_saved,
                )
            except Exception as exc:
                log.exception("delivering the images of %s failed", generation.task_id)
                delivered = Delivered(
                    notes=[f"no previews or saved files: delivery failed ({type(exc).__name__}); the URLs stand"]
                )
        self.links.add(image.url for image in generation.images)
        if tracked is not None and row_id is not None:
            if delivered is not None and any(delivered.saved):
                delivered.saved = await tracked.add_saved(row_id, delivered.saved)
            await tracked.delivered(row_id)
            if tracked.pending(row_id) and RECORD_PENDING not in generation.notes:
                generation = generation.model_copy(update={"notes": [*generation.notes, RECORD_PENDING]})
        return generation_result(
            generation, delivered, wait_seconds=wait_seconds, max_wait=self.settings.max_wait_seconds, links=links
        )


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
