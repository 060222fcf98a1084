"""What the tools share for the server's life (AppContext), and the lifespan that builds and closes it."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2

from .._config import Settings
from ..api._catalog import Catalog, CatalogFileError
from ..api._client import QolabaClient
from ..api._live import LiveCatalog
from ..generations._generations import Generations, open_configured_ledger
from ..generations._pacing import PollPolicy
from ..generations._recorded import RecordedRunner
from ..generations._runner import SUBMIT_MIN_SECONDS, Runner
from ..images._delivery import Delivery, default_output_dir
from ..images._inputs import parse_roots
from ..ledger import WriteQueue
from ..ops import ObservedTransport, Ops

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
    generations: Generations
    delivery: Delivery
    catalog: Catalog  # the built-in catalogue with the models file: what LiveCatalog falls back to
    prices: LiveCatalog  # the catalogue with the live model list merged in: prices and published limits
    local_inputs: bool = False  # local files as image inputs: stdio only (over HTTP the server's disk is not yours)
    # Stateless replicas: mode "sync" is submitted in async mode, so every generation has a Qolaba task id that any
    # replica can follow (a synchronous request's answer reaches only the process that holds it, and dies with it).
    sync_as_async: bool = False
    input_roots: list[Path] = field(default_factory=list)
    catalog_warning: str | None = None
    links: IssuedLinks = field(default_factory=IssuedLinks)
    # list_models answers by (capability, warnings): the catalogue they were made from, their text and structure
    listings: dict[tuple[str | None, tuple[str, ...]], tuple[Catalog, str, dict[str, Any]]] = field(
        default_factory=dict
    )
    ops: Ops = field(default_factory=Ops)  # readiness, metrics and trace hooks (all off by default)
    # the gallery's previews: decoded a few at a time, whatever an app asks for at once
    gallery_decodes: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(2))


def lifespan(
    settings: Settings,
    *,
    transport: Literal["stdio", "http"],
    stopping: anyio.Event | None,
    closed: threading.Event | None,
    ops: Ops | None = None,
    stateless: bool = False,
) -> Callable[[Any], AbstractAsyncContextManager[AppContext]]:
    """The server's lifespan: the HTTP clients, the catalogue, the ledger and the runners, made and closed in order.

    ``closed`` is set once it has ended: every ledger record written (or given up on), every client shut."""

    observed = ops or Ops()
    # Only an observed server gets the wrapping transports: otherwise the clients are exactly as before.
    watched = observed.metrics is not None or observed.tracing

    def observed_transport(kind: Literal["api", "image"]) -> httpx2.AsyncBaseTransport | None:
        return ObservedTransport(httpx2.AsyncHTTPTransport(), ops=observed, kind=kind) if watched else None

    @asynccontextmanager
    async def app_lifespan(server: Any) -> AsyncIterator[AppContext]:
        warning = None
        try:
            catalog = Catalog.load(settings.models_file)
        except CatalogFileError as exc:
            log.error("%s; using the built-in models", exc)
            catalog, warning = Catalog.builtin(), f"{exc}; the built-in models are listed instead"
        client = QolabaClient(
            base_url=settings.api_base_url,
            api_key=settings.api_key,
            connect_timeout=settings.connect_timeout,
            request_timeout=settings.request_timeout,
            sync_timeout=settings.sync_timeout,
            transport=observed_transport("api"),
        )
        poll = PollPolicy(min_interval=settings.poll_min_interval, max_interval=settings.poll_max_interval)
        output_dir = settings.output_dir or default_output_dir()  # the one place the default folder is chosen
        # Image hosts get their own client (made on first use): it never carries the Qolaba key.
        delivery = Delivery(
            connect_timeout=settings.connect_timeout,
            output_dir=output_dir,
            preview=settings.preview,
            preview_max_bytes=settings.preview_max_bytes,
            max_download_bytes=settings.download_max_bytes,
            # The API's own origin is trusted as the API is: a local or self-hosted API (the sandbox) just works.
            trusted_origins=frozenset({settings.api_base_url}),
            allow_private=settings.download_allow_private,
            transport=observed_transport("image"),
        )
        # Runner holds the task group where synchronous requests outlive their calls: it lives as long as the server.
        ledger = await open_configured_ledger(settings)
        # Left in reverse order: delivery, the ledger runner's heartbeat, Runner (its synchronous requests end), the
        # ledger records not written yet (flushed: those of what Runner just ended too), the API client, the ledger.
        async with AsyncExitStack() as stack:
            if closed is not None:
                stack.callback(closed.set)  # the first in, so the last out
            writes = None
            if ledger is not None:
                stack.push_async_callback(ledger.close)
            await stack.enter_async_context(client)
            if ledger is not None:
                on_write = observed.ledger_write if observed.metrics is not None else None
                writes = await stack.enter_async_context(WriteQueue(ledger=ledger, on_write=on_write))
            runner = await stack.enter_async_context(Runner(client=client, poll=poll, stopping=stopping))
            recorded = None
            if ledger is not None:
                recorded = RecordedRunner(
                    runner=runner,
                    ledger=ledger,
                    api_base=settings.api_base_url,
                    api_key=settings.api_key,
                    join_window=settings.join_window_seconds,
                    writes=writes,
                )
                # a synchronous request lasts up to sync_timeout, an async submission up to the longest wait
                longest = max(settings.sync_timeout, settings.max_wait_seconds, SUBMIT_MIN_SECONDS)
                expired = await recorded.expire_stale(longest_submission=longest)
                if expired:
                    log.warning("%d generation(s) were left submitting by a stopped server: now 'unknown'", expired)
                await stack.enter_async_context(recorded)
            stack.push_async_callback(delivery.aclose)
            # saves a call could not wait for go on here until shutdown (with a grace), before the ledger's writes
            await stack.enter_async_context(delivery)
            generations = Generations(
                settings=settings,
                runner=runner,
                recorded=recorded,
                delivery=delivery,
                save_by_default=settings.save == "on" or (settings.save == "auto" and transport == "stdio"),
            )
            # ready: the catalogue is loaded; the probe is one primary-key read of the ledger (no API call)
            observed.ready(probe=_ledger_probe(ledger), models=catalog.ids())
            stack.callback(observed.stopped)
            yield AppContext(
                ops=observed,
                settings=settings,
                generations=generations,
                delivery=delivery,
                catalog=catalog,
                prices=LiveCatalog(fallback=catalog, fetch=client.list_models),
                local_inputs=transport == "stdio",
                sync_as_async=stateless,
                input_roots=parse_roots(settings.input_roots, output_dir),
                catalog_warning=warning,
            )

    return app_lifespan


def _ledger_probe(ledger: Any) -> Callable[[], Awaitable[object]]:
    async def probe() -> object:
        return None if ledger is None else await ledger.get("readiness-probe")

    return probe
