"""Streamable HTTP: the MCP server as an ASGI app at /mcp, behind a bearer token and Host/Origin checks.

Served by uvicorn's HTTP/1.1 protocol with two guards it lacks (a deadline for request headers, a cap on open
connections) and a graceful stop: on SIGTERM/SIGINT calls in flight return what they have (their task_id) first.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from sse_starlette.sse import AppStatus
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ._config import Settings
from .ops import Health, Ops
from .server._disconnect import DisconnectSignal

log = logging.getLogger("qolaba_mcp.http")

MCP_PATH = "/mcp"
_LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
_LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]

# The server's limits: constants for now, each of which could become a QOLABA_MCP_* setting.
HEADER_TIMEOUT = 10.0
"""Seconds a connection gets to send a request's line and headers, from its opening or its previous response."""
KEEP_ALIVE_TIMEOUT = 5
"""Seconds an idle keep-alive connection stays open."""
MAX_CONNECTIONS = 500
"""Open connections (and requests in progress) at which new ones are answered 503; far below the usual 1,024
file descriptors, so outgoing API requests and saved images always have some."""
SHUTDOWN_GRACE = 5.0
"""Seconds calls in flight get, once the server is told to stop, to return before the process exits."""


class InsecureBindError(Exception):
    """A non-loopback bind with no token and no explicit opt-out."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """Refuses any HTTP request whose ``Authorization: Bearer`` token is not ours (constant-time comparison).

    The scheme is case-insensitive and may be followed by any run of spaces or tabs (RFC 9110, section 11.1).
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            parts = given.split(maxsplit=1)  # the scheme, then the token after any spaces or tabs
            token = parts[1].strip() if len(parts) == 2 and parts[0].lower() == b"bearer" else b""
            if not hmac.compare_digest(token, self._expected):
                await _send_json(
                    send,
                    401,
                    {"error": "unauthorized", "message": "Send Authorization: Bearer <QOLABA_MCP_AUTH_TOKEN>."},
                    [(b"www-authenticate", b'Bearer realm="qolaba-mcp"')],
                )
                return
        await self._app(scope, receive, send)


async def _send_json(send: Send, status: int, body: dict[str, str], headers: list[tuple[bytes, bytes]]) -> None:
    content = json.dumps(body).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": content})


def http_app(server: MCPServer, settings: Settings, *, host: str, stateless: bool, insecure_no_auth: bool) -> ASGIApp:
    """The ASGI app; responses stream as SSE so progress notifications reach HTTP clients too."""
    token = settings.mcp_auth_token.get_secret_value() if settings.mcp_auth_token else ""
    oauth = settings.mcp_oauth_issuer is not None  # OAuth (issue 23): every caller signs in; see _oauth.py
    if not token and not oauth and not is_loopback(host) and not insecure_no_auth:
        raise InsecureBindError(
            f"refusing to serve on {host} without authentication: set QOLABA_MCP_AUTH_TOKEN (clients then send "
            "Authorization: Bearer <token>), bind 127.0.0.1, or pass --insecure-no-auth if something in front of "
            "this server authenticates."
        )
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*_LOOPBACK_HOSTS, *settings.mcp_allowed_hosts],
        allowed_origins=[*_LOOPBACK_ORIGINS, *settings.mcp_allowed_origins],
    )
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=stateless,
        json_response=False,
        host=host,
        max_request_body_size=settings.mcp_max_body_bytes,
        transport_security=security,
    )
    guarded = DisconnectSignal(app)
    if oauth:
        from ._oauth import OAuthGate

        return OAuthGate(guarded, settings, mcp_path=MCP_PATH)
    return BearerAuth(guarded, token) if token else guarded


def serve_http(
    server: MCPServer,
    settings: Settings,
    *,
    host: str,
    port: int,
    stateless: bool,
    insecure_no_auth: bool,
    log_level: str,
    on_shutdown: Callable[[], None] = lambda: None,
    ops: Ops | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; then ``on_shutdown()`` (calls stop waiting) and a drain of SHUTDOWN_GRACE s."""
    drain = Drain(http_app(server, settings, host=host, stateless=stateless, insecure_no_auth=insecure_no_auth))
    ops = ops or Ops()
    config = uvicorn.Config(
        Health(drain, ops),  # /healthz and /readyz: before the token check and the drain (docs/operations.md)
        host=host,
        port=port,
        http=GuardedH11Protocol,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        limit_concurrency=MAX_CONNECTIONS,
        log_level=log_level.lower(),
        access_log=log_level.upper() == "DEBUG",
        log_config=None,  # our stderr logging, never stdout
    )
    # sse-starlette (the SDK's SSE responses) would cut every stream the moment a signal arrives, results in
    # flight included; GracefulServer ends the streams itself once the calls have returned.
    AppStatus.enable_automatic_graceful_drain = False
    graceful = GracefulServer(config, drain=drain, on_shutdown=_both(ops.drain, on_shutdown))
    if threading.current_thread() is not threading.main_thread():
        graceful.run()
        return
    # uvicorn re-raises the signal that stopped it once it has shut down, which would end a clean stop as death by
    # SIGTERM (exit status 143); a stop we were asked for and carried out is a normal exit.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        graceful.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _both(first: Callable[[], None], then: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        first()
        then()

    return both


class Drain:
    """Counts the calls in flight and, once the server is stopping, answers new requests 503."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self.stopping = False
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self.stopping:
            await _send_json(
                send,
                503,
                {"error": "shutting down", "message": "This server is restarting; retry in a few seconds."},
                [(b"connection", b"close"), (b"retry-after", b"5")],
            )
            return
        # A GET is a session's long-lived notification stream, not a call: the drain does not wait for it.
        call = scope["method"] != "GET"
        self.calls += call
        try:
            await self._app(scope, receive, send)
        finally:
            self.calls -= call


class GracefulServer(uvicorn.Server):
    """uvicorn's server, stopping so that calls in flight return what they have before the process exits."""

    def __init__(self, config: uvicorn.Config, *, drain: Drain, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._drain = drain
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for server in self.servers:
            server.close()  # stop accepting now; uvicorn would only after the drain
        self._drain.stopping = True
        self._on_shutdown()  # waiting calls return now, with their task_id and status PENDING
        while self._drain.calls and not self.force_exit and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._drain.calls:
            log.warning("%d call(s) still running after %.0f s; stopping them", self._drain.calls, SHUTDOWN_GRACE)
        AppStatus.should_exit = True  # now end the SSE streams still open (sessions' notification streams)
        # What is left of the grace period bounds uvicorn's own wait for connections, then it cancels them.
        self.config.timeout_graceful_shutdown = max(1, round(deadline - time.monotonic()))
        await super().shutdown(sockets)


def _plain_response(status: str, text: str, *headers: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, for the protocol to write before any ASGI app runs."""
    body = text.encode()
    lines = [f"HTTP/1.1 {status}", "content-type: text/plain; charset=utf-8", *headers, "connection: close"]
    return "\r\n".join([*lines, f"content-length: {len(body)}", "", ""]).encode() + body


_BUSY = _plain_response(
    "503 Service Unavailable", "Too many open connections; retry in a few seconds.\n", "retry-after: 1"
)
_SLOW = _plain_response("408 Request Timeout", f"The request headers took over {HEADER_TIMEOUT:.0f} s.\n")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 with a deadline for request headers and a cap on open connections.

    uvicorn waits forever for the rest of a request line or headers, and its ``limit_concurrency`` answers only a
    complete request; so connections that send half a request and stall (slowloris) would pile up until the process
    has no file descriptors left, for clients or for its own calls to the API.
    """

    _header_timer: asyncio.TimerHandle | None = None
    _linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.limit_concurrency is not None and len(self.connections) >= self.limit_concurrency:
            self._refuse()
        else:
            self._await_headers()

    def data_received(self, data: bytes) -> None:
        if self._linger is None:  # a refused connection's request is read and dropped
            super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # a keep-alive connection: the next request gets its own deadline
            self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._linger):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        cycle = self.cycle  # a new request replaces it once its headers are in
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_due, cycle)

    def _headers_due(self, cycle: object) -> None:
        if self.cycle is not cycle or self.transport.is_closing():
            return  # the headers came in time
        if self.conn.trailing_data[0]:  # part of a request arrived: say why it is cut off
            self.transport.write(_SLOW)
        self.transport.close()

    def _refuse(self) -> None:
        self.connections.discard(self)  # it holds no request, and is gone in a second
        self.transport.write(_BUSY)
        # End our side but keep reading (and dropping) for a moment: closing with the client's request unread would
        # reset the connection, and the client would lose the 503 before reading it.
        self.transport.write_eof()
        self._linger = self.loop.call_later(1.0, self.transport.close)
