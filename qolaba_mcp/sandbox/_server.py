"""Run the sandbox on a real loopback socket, in the foreground (CLI) or on a background thread (tests, demo)."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.types import ASGIApp

from ._config import SandboxConfig
from ._routes import Sandbox
from ._shapes import QuietInjectedDrops


def _quiet_injected_drops() -> None:
    errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietInjectedDrops) for f in errors.filters):
        errors.addFilter(QuietInjectedDrops())


class SandboxServer:
    """A sandbox served by uvicorn on a background thread; ``port=0`` picks a free ephemeral port."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        front: ASGIApp | None = None,
    ) -> None:
        """``front``: an ASGI app served in the sandbox's place, that hands it what it does not answer itself."""
        _quiet_injected_drops()
        self.sandbox = Sandbox(config)
        app = front or self.sandbox
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", interface="asgi3"
            )
        )
        self._thread: threading.Thread | None = None
        self.host = host
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.run, name="qolaba-sandbox", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the sandbox could not start on {self.host}:{self.port}")
            self._thread.join(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def configure(self, **changes: Any) -> SandboxConfig:
        return self.sandbox.configure(**changes)

    def stats(self) -> dict[str, Any]:
        """The counters, read over HTTP as any client would."""
        with urllib.request.urlopen(f"{self.base_url}/_sandbox/stats", timeout=10) as response:
            return dict(json.load(response))


def serve(config: SandboxConfig, *, host: str, port: int) -> None:
    """Serve the sandbox in the foreground until interrupted (the ``qolaba-mcp sandbox`` command)."""
    _quiet_injected_drops()
    uvicorn.run(Sandbox(config), host=host, port=port, log_level="info", lifespan="off", log_config=None)
