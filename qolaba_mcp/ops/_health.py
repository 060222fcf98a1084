"""``GET /healthz`` and ``GET /readyz`` in front of the MCP app: unauthenticated, cheap, nothing private."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from ._ops import Ops

HEALTH_PATHS = ("/healthz", "/readyz")


class Health:
    """Answers the two probe paths itself (before the bearer check and the drain); passes everything else on.

    /healthz: the process serves HTTP. /readyz: it should get traffic (the catalogue is loaded, the ledger
    answers, it is not draining); 503 with the reason otherwise."""

    def __init__(self, app: ASGIApp, ops: Ops) -> None:
        self._app, self._ops = app, ops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in HEALTH_PATHS:
            await self._app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, {"status": "method not allowed"}, allow=True)
        elif scope["path"] == "/healthz":
            await _answer(send, 200, {"status": "ok"})
        elif (reason := await self._ops.not_ready()) is None:
            await _answer(send, 200, {"status": "ready"})
        else:
            await _answer(send, 503, {"status": "not ready", "reason": reason})


async def _answer(send: Send, status: int, body: dict[str, str], *, allow: bool = False) -> None:
    content = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if allow:
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
