"""Shared by the Python interop clients (stdlib only: each client imports it from its own venv).

Every client runs the server command given on its command line (`<client>.py CMD ARG...`), makes the same calls,
and ends with one line: `OK: ...` (exit 0) or `FAIL: <first reason> (+N more)` (exit 1). Each check that fails is
recorded and printed as it happens, and the run goes on where it can, so the log shows every incompatibility and
the summary line the first one.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable
from importlib import metadata
from typing import Any

EXPECTED_TOOLS = ("generate_image", "get_task", "list_models")
GENERATE_ARGS: dict[str, Any] = {
    "model": "vertex/nano-banana-flash",
    "prompt": "A lighthouse on a cliff at dusk, interop check",
    "aspect_ratio": "16:9",
}
# Magic numbers of the image formats a resource may carry.
_IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp"}


def server_command() -> tuple[str, list[str]]:
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} SERVER_COMMAND [ARG...]")
    return sys.argv[1], sys.argv[2:]


def server_env() -> dict[str, str]:
    """The server's environment: ours (PATH, HOME, ...) with saving off, so no client writes image files."""
    env = dict(os.environ)
    env["QOLABA_SAVE"] = "off"
    return env


def versions(*dists: str) -> str:
    out = []
    for dist in dists:
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


def one_line(text: object, limit: int = 400) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """`Type: message` of the first leaf of an exception (group), on one line, with its cause when it adds one."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = f"{type(exc).__name__}: {one_line(exc)}"
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in str(exc):
        text += f" (caused by {type(cause).__name__}: {one_line(cause, 300)})"
    return text


def image_kind(data: bytes) -> str | None:
    for magic, kind in _IMAGE_MAGIC.items():
        if data.startswith(magic):
            return kind
    return None


class Report:
    def __init__(self, client: str) -> None:
        self.client = client
        self.failures: list[str] = []

    def ok(self, what: str) -> None:
        print(f"  ok   {what}", flush=True)

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"  FAIL {what}", flush=True)

    def check(self, condition: object, ok: str, failure: str) -> bool:
        if condition:
            self.ok(ok)
        else:
            self.fail(failure)
        return bool(condition)

    async def step(self, what: str, action: Callable[[], Awaitable[Any]]) -> Any:
        """Run one client call; on an exception record `what: <exception>` and return None."""
        try:
            return await action()
        except Exception as exc:
            self.fail(f"{what}: {describe(exc)}")
            traceback.print_exc(file=sys.stdout)
            return None

    def check_tool_names(self, names: Iterable[str]) -> None:
        names = set(names)
        missing = [t for t in EXPECTED_TOOLS if t not in names]
        self.check(not missing, f"tools/list: {', '.join(sorted(names))}", f"tools/list lacks {', '.join(missing)}")

    def check_models(self, structured: Any) -> list[dict[str, Any]]:
        models = structured.get("models") if isinstance(structured, dict) else None
        if not isinstance(models, list) or not models:
            self.fail(f"list_models: no models in structuredContent ({one_line(structured, 200)})")
            return []
        ids = [m.get("id") for m in models if isinstance(m, dict)]
        self.check(
            GENERATE_ARGS["model"] in ids,
            f"list_models: {len(ids)} models",
            f"list_models lacks {GENERATE_ARGS['model']} (got {ids})",
        )
        return models

    def check_generated(self, structured: Any, links: int | None) -> None:
        """structuredContent of a finished generate_image; `links`: resource_link blocks seen (None: not visible)."""
        if not isinstance(structured, dict):
            self.fail(f"generate_image: no structuredContent ({one_line(structured, 200)})")
            return
        status = structured.get("status")
        images = structured.get("images") or []
        if not self.check(
            status == "SUCCESS" and images,
            f"generate_image: {status}, {len(images)} image(s)",
            f"generate_image: status {status}, {len(images)} image(s) (error: {structured.get('error')})",
        ):
            return
        if links is not None:
            self.check(
                links >= len(images),
                f"generate_image: {links} resource_link(s)",
                f"generate_image: {links} resource_link(s) for {len(images)} image(s)",
            )

    def check_resource_blob(
        self, uri: str, mime_type: str | None, blob_b64: str | None = None, data: bytes | None = None
    ) -> None:
        """One read-back resource: image bytes whose format matches its mimeType."""
        if data is None:
            if blob_b64 is None:
                self.fail(f"resources/read {uri}: no blob (text contents for an image link)")
                return
            try:
                data = base64.b64decode(blob_b64, validate=True)
            except ValueError as exc:
                self.fail(f"resources/read {uri}: blob is not base64 ({exc})")
                return
        kind = image_kind(data)
        self.check(
            kind is not None and (mime_type is None or mime_type == kind),
            f"resources/read {uri}: {len(data)} bytes of {kind}",
            f"resources/read {uri}: {len(data)} bytes, detected {kind}, mimeType {mime_type}",
        )

    def finish(self, ok_summary: str) -> int:
        if self.failures:
            more = f" (+{len(self.failures) - 1} more, see log)" if len(self.failures) > 1 else ""
            print(f"FAIL: {one_line(self.failures[0], 600)}{more}", flush=True)
            return 1
        print(f"OK: {ok_summary}", flush=True)
        return 0


def run(client: str, main: Callable[[Report], Awaitable[str]]) -> None:
    """Run `main(report)`; it returns the OK summary. A crash is a failure with its reason, never a traceback only."""
    report = Report(client)
    print(f"{client}: {' '.join(sys.argv[1:])}", flush=True)
    try:
        summary = asyncio.run(main(report))
    except BaseException as exc:
        traceback.print_exc(file=sys.stdout)
        report.fail(f"crashed: {describe(exc)}")
        summary = ""
    sys.exit(report.finish(summary))
