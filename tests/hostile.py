"""A misbehaving Qolaba API and image host on loopback, for the hardening tests.

Unlike the sandbox, which behaves like the real API (faults included), this server answers whatever a test
scripts, byte for byte: wrong types, huge or deeply nested bodies, bodies that trickle a byte a second, images that
are not what they claim. It is a raw asyncio TCP server in a thread, so nothing about HTTP is tidied up for us.

    with HostileServer() as host:
        host.route("POST", "/api/v1/images/generate", json_reply(200, {...}))
        host.route("GET", "/img/0.png", raw_reply(200, png_bytes, content_type="image/png"))
        ... host.base_url ...
        host.requests  # every request seen: (method, path, headers, body)
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def raw_reply(
    status: int, body: bytes, *, content_type: str = "application/json", headers: dict[str, str] | None = None
) -> Handler:
    """A complete answer at once."""

    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        head = {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close"}
        writer.write(_head(status, {**head, **(headers or {})}) + body)
        await writer.drain()

    return handle


def json_reply(status: int, payload: Any, *, headers: dict[str, str] | None = None) -> Handler:
    return raw_reply(status, json.dumps(payload).encode(), headers=headers)


def trickle_reply(
    status: int, body: bytes, *, content_type: str = "application/json", every: float = 1.0, chunk: int = 1
) -> Handler:
    """Headers at once, then ``chunk`` bytes every ``every`` seconds: each read succeeds, the whole never ends."""

    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(
            _head(status, {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close"})
        )
        await writer.drain()
        for start in range(0, len(body), chunk):
            writer.write(body[start : start + chunk])
            await writer.drain()
            await asyncio.sleep(every)

    return handle


def hang_reply() -> Handler:
    """Never answers (until the server stops)."""

    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    return handle


def redirect_reply(location: str, status: int = 302) -> Handler:
    return raw_reply(status, b"", content_type="text/plain", headers={"Location": location})


def sequence(*handlers: Handler) -> Handler:
    """The first request gets the first handler, and so on; the last one repeats."""
    calls = [0]

    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        index = min(calls[0], len(handlers) - 1)
        calls[0] += 1
        await handlers[index](request, writer)

    return handle


@dataclass
class HostileServer:
    """Scripted answers per (method, path); unscripted requests get 404."""

    host: str = "127.0.0.1"
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method.upper(), path)] = handler

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r.method == method.upper() and r.path == path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            request = Request(method, target, headers, body)
            self.requests.append(request)
            handler = self.routes.get((method, target.split("?")[0])) or raw_reply(404, b'{"error": "Not Found"}')
            await handler(request, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError, ValueError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> HostileServer:
        started = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._server = await asyncio.start_server(self._serve, self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            await self._stop.wait()  # one coroutine from start to stop: a stop can never land between two runs
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True, name="hostile-server")
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the hostile server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
