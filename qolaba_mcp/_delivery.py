"""Image delivery: download once after success, then small inline previews and files saved on disk."""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import anyio
import httpx2

from ._errors import QolabaError
from ._models import ImageOutput

log = logging.getLogger("qolaba_mcp.delivery")

PreviewMode = Literal["on", "off", "full"]
PREVIEW_LONG_SIDE = 512
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class DownloadError(QolabaError):
    """An image could not be fetched within the rules (scheme, status, type, size)."""


@dataclass(frozen=True)
class Preview:
    index: int
    data: bytes
    mime_type: str


@dataclass
class Delivered:
    """What delivery produced for one result; problems are notes, never failures of the paid generation."""

    previews: list[Preview] = field(default_factory=list)
    saved: list[str | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def default_output_dir() -> Path:
    """A per-user data folder: %LOCALAPPDATA% on Windows, Application Support on macOS, XDG elsewhere."""
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "qolaba-mcp" / "images"


def safe_name(task_id: str, index: int, content_type: str) -> str:
    """A file name made only from the task id and index, never from a prompt or any argument as a path."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", task_id)[:120] or "task"
    return f"{stem}_{index}.{_EXTENSIONS.get(content_type, 'png')}"


class Delivery:
    """Fetches generated images with its own client: the Qolaba key is never sent to image hosts."""

    def __init__(
        self,
        *,
        http: httpx2.AsyncClient | None = None,
        connect_timeout: float = 10.0,
        output_dir: Path,
        preview: PreviewMode = "on",
        preview_max_bytes: int = 100_000,
        max_download_bytes: int = 50 * 1024 * 1024,
    ) -> None:
        self._given = http
        self._own: httpx2.AsyncClient | None = None
        self._connect_timeout = connect_timeout
        self.output_dir = output_dir
        self.preview = preview
        self.preview_max_bytes = preview_max_bytes
        self.max_download_bytes = max_download_bytes

    @property
    def _http(self) -> httpx2.AsyncClient:
        """The given client, or one of our own made on first use (not at start-up: a TLS context is slow)."""
        if self._given is not None:
            return self._given
        if self._own is None:
            self._own = httpx2.AsyncClient(
                timeout=httpx2.Timeout(60, connect=self._connect_timeout),
                follow_redirects=True,
                headers={"User-Agent": "qolaba-mcp"},
            )
        return self._own

    async def aclose(self) -> None:
        if self._own is not None:
            await self._own.aclose()

    async def fetch(self, url: str) -> tuple[bytes, str]:
        """The image's bytes and content type: http(s) only, 200 only, image/* only, streamed under the cap."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise DownloadError(f"refusing to download {url[:80]!r}: only http and https URLs are fetched")
        try:
            async with self._http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise DownloadError(f"image download answered {response.status_code}")
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if not content_type.startswith("image/"):
                    raise DownloadError(f"image download sent {content_type or 'no content type'}, not an image")
                declared = int(response.headers.get("content-length") or 0)
                if declared > self.max_download_bytes:
                    raise DownloadError(
                        f"image of {declared} bytes is over the {self.max_download_bytes}-byte download cap "
                        "(QOLABA_DOWNLOAD_MAX_BYTES)"
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_download_bytes:
                        raise DownloadError(
                            f"image is over the {self.max_download_bytes}-byte download cap (QOLABA_DOWNLOAD_MAX_BYTES)"
                        )
                    chunks.append(chunk)
        except httpx2.HTTPError as exc:
            raise DownloadError(f"image download failed ({type(exc).__name__})") from exc
        return b"".join(chunks), content_type

    async def deliver(self, task_id: str | None, images: list[ImageOutput], *, save: bool) -> Delivered:
        """Download each image once, then make previews and/or save files, as configured."""
        delivered = Delivered(saved=[None] * len(images))
        if not images or (self.preview == "off" and not save):
            return delivered
        budget = self.preview_max_bytes // len(images)
        limiter = anyio.CapacityLimiter(4)

        async def one(index: int, image: ImageOutput) -> None:
            async with limiter:
                try:
                    data, content_type = await self.fetch(image.url)
                except DownloadError as exc:
                    delivered.notes.append(f"image {index + 1}: {exc.message}")
                    return
                if self.preview != "off":
                    preview = await anyio.to_thread.run_sync(_preview, data, content_type, budget, self.preview)
                    if preview is None:
                        delivered.notes.append(f"image {index + 1}: no preview fits {budget} bytes")
                    else:
                        delivered.previews.append(Preview(index, *preview))
                if save:
                    try:
                        path = await anyio.to_thread.run_sync(self._save, task_id or "image", index, data, content_type)
                    except OSError as exc:
                        delivered.notes.append(
                            f"could not save image {index + 1} in {self.output_dir} ({exc.strerror or exc}); "
                            "set QOLABA_OUTPUT_DIR to a folder this server can write"
                        )
                    else:
                        delivered.saved[index] = str(path)

        async with anyio.create_task_group() as group:
            for index, image in enumerate(images):
                group.start_soon(one, index, image)
        delivered.previews.sort(key=lambda preview: preview.index)
        return delivered

    def _save(self, task_id: str, index: int, data: bytes, content_type: str) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        target = self.output_dir / safe_name(task_id, index, content_type)
        # Written beside the target and renamed over it: a reader never sees half a file.
        temporary = target.with_name(f".partial-{secrets.token_hex(8)}{target.suffix}")
        try:
            with open(temporary, "xb") as file:  # honours the umask, unlike mkstemp's 0600
                file.write(data)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return target


def _preview(data: bytes, content_type: str, budget: int, mode: PreviewMode) -> tuple[bytes, str] | None:
    """The original bytes (mode "full", when they fit) or a JPEG/WebP of long side <= 512 px within budget."""
    if mode == "full" and len(data) <= budget:
        return data, content_type
    try:
        from PIL import Image  # imported on first use: start-up stays fast

        with Image.open(io.BytesIO(data)) as source:
            source.draft("RGB", (PREVIEW_LONG_SIDE, PREVIEW_LONG_SIDE))
            alpha = source.mode in ("RGBA", "LA", "PA") or "transparency" in source.info
            picture = source.convert("RGBA" if alpha else "RGB")
        side = PREVIEW_LONG_SIDE
        while side >= 64:
            picture.thumbnail((side, side))
            for quality in (80, 65, 50, 35):
                out = io.BytesIO()
                # WebP keeps transparency (a removed background); JPEG is what every host shows.
                picture.save(out, format="WEBP" if alpha else "JPEG", quality=quality)
                if out.tell() <= budget:
                    return out.getvalue(), "image/webp" if alpha else "image/jpeg"
            side = int(side * 0.7)
    except Exception as exc:  # a preview is a courtesy: any failure only means no preview
        log.warning("no preview for a %s image: %s", content_type, exc)
    return None


def as_png(data: bytes) -> bytes:
    """Any image Pillow reads, re-encoded as PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        out = io.BytesIO()
        picture.save(out, format="PNG")
    return out.getvalue()
