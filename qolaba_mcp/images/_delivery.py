"""Image delivery: download once after success, then small inline previews and files saved on disk.

Memory stays bounded whatever an image host sends. A download streams into a file (the one being saved, or a
temporary one that keeps small images in memory), at most ``max_downloads`` at once in the process. Only PNG, JPEG,
WebP and GIF are decoded, each by its own Pillow plugin alone; a picture declaring more than ``max_pixels`` is
refused before any pixel is decoded, JPEGs are decoded reduced, and at most ``max_decodes`` run at once.

A call waits for delivery only as long as its caller was promised. Entered as an async context (the server's
lifespan), a ``Delivery`` keeps saving what a call could not wait for in a task group of its own, reports each file
saved late, and on leaving gives those saves ``shutdown_grace`` seconds before cancelling them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import anyio
import httpx2

from .._identity import acting_person
from ..api._wire import ImageOutput
from . import _fetch
from ._fetch import DownloadError, IncompleteImage

# NoPreview and make_preview are imported from here too; tests patch make_preview in this module
from ._previews import MAX_PIXELS, PreviewMode, as_png
from ._previews import NoPreview as NoPreview
from ._previews import make_preview as make_preview

log = logging.getLogger("qolaba_mcp.delivery")

# (index, path): an image saved after the call that asked for it returned
SavedFn = Callable[[int, str], Awaitable[None]]
SPOOL_BYTES = 256 * 1024  # a download waiting for its preview stays in memory up to this size, on disk beyond
PER_CALL = 4  # one result's images fetched at once: a large result cannot take every download slot
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


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


class _Stop(Exception):
    """Nothing more can be done for this image; the message is its note."""


class _Gathered:
    """A download's chunks written to its file ``SPOOL_BYTES`` at a time: a thread hop per piece, not per chunk."""

    def __init__(self, file: IO[bytes], limiter: anyio.CapacityLimiter) -> None:
        self._file, self._limiter = file, limiter
        self._chunks: list[bytes] = []
        self._size = 0

    async def write(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size >= SPOOL_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks, self._size = [], 0
            await anyio.to_thread.run_sync(self._file.write, data, limiter=self._limiter)


def default_data_dir() -> Path:
    """A per-user data folder: %LOCALAPPDATA% on Windows, Application Support on macOS, XDG elsewhere."""
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "qolaba-mcp"


def default_output_dir() -> Path:
    """Where saved images go by default: ``images`` in the per-user data folder."""
    return default_data_dir() / "images"


def safe_name(task_id: str, index: int, content_type: str) -> str:
    """A file name made only from the task id and index, never from a prompt or any argument as a path.

    The readable stem loses characters and length; the hash of the exact id keeps ids that differ only there
    (``a.b``, ``a:b``, ``a_b``; or in case, on a case-insensitive disk) from sharing, and overwriting, a file.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", task_id)[:100] or "task"
    digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{stem}-{digest}_{index}.{_EXTENSIONS.get(content_type, 'png')}"


class Delivery:
    """Fetches generated images with its own client: the Qolaba key is never sent to image hosts.

    One instance serves the whole process, so its download and decode limits are process-wide.
    """

    def __init__(
        self,
        *,
        http: httpx2.AsyncClient | None = None,
        connect_timeout: float = 10.0,
        output_dir: Path,
        preview: PreviewMode = "on",
        preview_max_bytes: int = 100_000,
        max_download_bytes: int = 50 * 1024 * 1024,
        trusted_origins: frozenset[str] = frozenset(),
        allow_private: bool = False,
        fetch_timeout: float = 30.0,
        deliver_timeout: float = 40.0,
        min_deliver_seconds: float = 3.0,
        shutdown_grace: float = 5.0,
        max_pixels: int = MAX_PIXELS,
        max_downloads: int = 16,
        max_decodes: int = 2,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._given = http
        self._transport = transport
        self._own: httpx2.AsyncClient | None = None
        self._connect_timeout = connect_timeout
        self._output_root = output_dir
        self.preview = preview
        self.preview_max_bytes = preview_max_bytes
        self.max_download_bytes = max_download_bytes
        # Origins given as URLs (the API's base URL, path and all); one that does not parse trusts nothing.
        self._trusted = frozenset(o for o in map(_fetch.origin_of, trusted_origins) if o is not None)
        self.allow_private = allow_private
        self.fetch_timeout = fetch_timeout
        self.deliver_timeout = deliver_timeout
        self.min_deliver_seconds = min_deliver_seconds
        self.shutdown_grace = shutdown_grace
        self.max_pixels = max_pixels
        self._downloads = anyio.CapacityLimiter(max_downloads)
        self._decodes = anyio.CapacityLimiter(max_decodes)
        # File work gets few threads too: every thread that touches image bytes grows a malloc arena of its own.
        self._files = anyio.CapacityLimiter(max_decodes)
        self._background: anyio.abc.TaskGroup | None = None
        self._saving: set[tuple[str, int]] = set()  # (task, index) being saved in the background
        self._quiet = anyio.Event()  # set when the last background save ends

    async def __aenter__(self) -> Self:
        group = anyio.create_task_group()
        await group.__aenter__()
        self._background = group
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        group, self._background = self._background, None
        try:
            if group is not None:
                # Saves under way get a bounded grace, even when the server is leaving by cancellation.
                with anyio.CancelScope(shield=True), anyio.move_on_after(self.shutdown_grace):
                    while self._saving:
                        await self._quiet.wait()
                group.cancel_scope.cancel()
                await group.__aexit__(None, None, None)
        finally:
            await self.aclose()

    @property
    def _http(self) -> httpx2.AsyncClient:
        """The given client, or one of our own made on first use (not at start-up: a TLS context is slow)."""
        if self._given is not None:
            return self._given
        if self._own is None:
            self._own = httpx2.AsyncClient(
                timeout=httpx2.Timeout(60, connect=self._connect_timeout),
                follow_redirects=False,  # each hop is checked by _fetch before it is followed
                headers={"User-Agent": "qolaba-mcp"},
                transport=self._transport,
            )
        return self._own

    async def aclose(self) -> None:
        own, self._own = self._own, None
        if own is not None:
            await own.aclose()

    def trusts(self, url: str) -> bool:
        """Whether ``url`` is on an origin trusted as the API is (the API's own)."""
        return _fetch.origin_of(url) in self._trusted

    def _rules(self) -> _fetch.Rules:
        return _fetch.Rules(
            trusted=self._trusted,
            allow_private=self.allow_private,
            max_bytes=self.max_download_bytes,
            timeout=self.fetch_timeout,
        )

    async def fetch(self, url: str) -> tuple[bytes, str]:
        """A whole image in memory and its real type (sniffed, not the label), by the download rules."""
        chunks: list[bytes] = []

        async def keep(chunk: bytes) -> None:
            chunks.append(chunk)

        async with self._downloads:
            kind = await _fetch.fetch(self._http, url, keep, self._rules())
        return b"".join(chunks), kind

    async def fetch_png(self, url: str) -> bytes:
        """An image as PNG bytes (for the image resource); every failure is a DownloadError."""
        data, kind = await self.fetch(url)
        if kind == "image/png":
            return data
        return await anyio.to_thread.run_sync(partial(as_png, data, max_pixels=self.max_pixels), limiter=self._decodes)

    async def deliver(
        self,
        task_id: str | None,
        images: list[ImageOutput],
        *,
        save: bool,
        deadline: float | None = None,
        known: Sequence[str | None] = (),
        on_saved: SavedFn | None = None,
    ) -> Delivered:
        """Download each image once, then make previews and/or save files, as configured; never raises.

        ``deadline``: the seconds this call may wait (at least ``min_deliver_seconds``). Saves not done by then go
        on in the background, when this Delivery is entered, and are reported to ``on_saved``; anything else left
        is stopped. ``known``: files saved earlier, per image: previewed from disk instead of downloaded again.
        """
        delivered = Delivered(saved=[None] * len(images))
        if not images:
            return delivered
        wait = self.deliver_timeout
        if deadline is not None:
            wait = min(max(deadline, self.min_deliver_seconds), self.deliver_timeout)
        budget = self.preview_max_bytes // len(images)
        name = task_id if task_id is not None else f"untitled-{secrets.token_hex(6)}"
        background = self._background if save and task_id is not None else None
        work = Delivered(saved=[None] * len(images))
        notes: list[list[str]] = [[] for _ in images]  # per image, so they read in image order
        finished: set[int] = set()
        all_finished = anyio.Event()
        late = False
        per_call = anyio.CapacityLimiter(PER_CALL)
        scopes = [anyio.CancelScope() for _ in images]

        async def one(index: int, image: ImageOutput) -> None:
            try:
                with scopes[index], anyio.move_on_after(self.deliver_timeout) as bound:
                    async with per_call:
                        await self._deliver_any(index, image, name, budget, save, known, work, notes[index])
                if bound.cancelled_caught:
                    notes[index].append(f"image {index + 1}: not delivered within {self.deliver_timeout:g} s")
            finally:
                finished.add(index)
                if len(finished) == len(images):
                    all_finished.set()
                saved_late = work.saved[index] if late else None
            try:
                if saved_late is not None:
                    log.info("image %d of %s saved after its call returned: %s", index + 1, task_id, saved_late)
                    if on_saved is not None:
                        await on_saved(index, saved_late)
            except Exception:  # a background task must never take the server's task group down
                log.exception("recording image %d of %s as saved failed", index + 1, task_id)
            finally:
                if background is not None:
                    self._saving.discard((name, index))
                    if not self._saving:
                        self._quiet.set()

        later = "get_task shows the path when saved" if on_saved else f"it will be in {self.output_dir}"
        async with anyio.create_task_group() as local:
            for index, image in enumerate(images):
                if (name, index) in self._saving:  # an earlier call is saving it already
                    notes[index].append(f"image {index + 1}: still saving in the background; {later}")
                    finished.add(index)
                    continue
                if background is not None:
                    if not self._saving:
                        self._quiet = anyio.Event()
                    self._saving.add((name, index))
                (background or local).start_soon(one, index, image)
            if len(finished) == len(images):
                all_finished.set()
            with anyio.move_on_after(wait):
                await all_finished.wait()
            late, in_time = True, set(finished)
            for index in sorted(set(range(len(images))) - in_time):
                if background is None:
                    scopes[index].cancel()
                    notes[index].append(f"image {index + 1}: not delivered within {round(wait, 1):g} s")
                else:
                    notes[index].append(f"image {index + 1}: still saving in the background; {later}")
            delivered.saved = [path if index in in_time else None for index, path in enumerate(work.saved)]
            delivered.previews = sorted(
                (preview for preview in work.previews if preview.index in in_time), key=lambda p: p.index
            )
            delivered.notes = [note for image_notes in notes for note in image_notes]
        return delivered

    async def _deliver_any(
        self,
        index: int,
        image: ImageOutput,
        name: str,
        budget: int,
        save: bool,
        known: Sequence[str | None],
        work: Delivered,
        notes: list[str],
    ) -> None:
        """One image from its saved file when there is one, else downloaded; failures become its notes."""
        try:
            path = known[index] if index < len(known) else None
            if path is not None and await anyio.to_thread.run_sync(os.path.isfile, path, limiter=self._files):
                await self._from_file(index, path, budget, work, notes)
                return
            if not save and self.preview == "off":
                return
            # Only a preview wanted: the API's low-resolution copy, when it offers one, is a smaller download.
            small = image.preview_url if not save and self.preview == "on" else None
            await self._deliver_one(index, small or image.url, name, budget, save, work, notes)
        except Exception as exc:  # an input nobody foresaw costs one image, never the paid result
            log.exception("delivering image %d failed", index + 1)
            notes.append(f"image {index + 1}: not delivered ({type(exc).__name__})")

    async def _from_file(self, index: int, path: str, budget: int, delivered: Delivered, notes: list[str]) -> None:
        """An image this server saved earlier: its path, and a preview made from the file."""
        delivered.saved[index] = path
        if self.preview == "off":
            return

        def preview() -> tuple[bytes, str]:
            with open(path, "rb") as file:
                kind = _fetch.sniff(file.read(16)) or ""
                return make_preview(file, kind, budget, self.preview, max_pixels=self.max_pixels)

        try:
            delivered.previews.append(Preview(index, *await anyio.to_thread.run_sync(preview, limiter=self._decodes)))
        except NoPreview as exc:
            notes.append(f"image {index + 1}: {exc}")
        except OSError as exc:
            notes.append(f"image {index + 1}: its saved file could not be read ({exc.strerror or exc})")

    async def _deliver_one(
        self, index: int, url: str, task_id: str, budget: int, save: bool, delivered: Delivered, notes: list[str]
    ) -> None:
        """One image: streamed into its file (or a temporary one), previewed from there, then put in place."""
        label = f"image {index + 1}"
        partial_path: Path | None = None
        file: IO[bytes] | None = None
        try:
            if save:
                try:
                    partial_path, file = await anyio.to_thread.run_sync(self._open_partial, limiter=self._files)
                except OSError as exc:
                    notes.append(self._save_note(index, exc))
            if file is None:
                if self.preview == "off":
                    return
                file = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (closed below)
            kind = await self._download(url, file, label, index, saving=partial_path is not None)
            if self.preview != "off":
                make = partial(make_preview, file, kind, budget, self.preview, max_pixels=self.max_pixels)
                try:
                    made = await anyio.to_thread.run_sync(make, limiter=self._decodes)
                except NoPreview as exc:
                    if exc.undecodable:
                        raise _Stop(f"{label}: {exc}" + ("; not saved" if partial_path else "")) from None
                    notes.append(f"{label}: {exc}")  # the image itself is fine: it is still saved
                else:
                    delivered.previews.append(Preview(index, *made))
            if partial_path is not None:
                file.close()
                name = safe_name(task_id, index, kind)
                try:
                    target = await anyio.to_thread.run_sync(self._place, partial_path, name, limiter=self._files)
                except OSError as exc:
                    raise _Stop(self._save_note(index, exc)) from None
                partial_path = None
                delivered.saved[index] = str(target)
        except _Stop as stop:
            notes.append(str(stop))
        finally:
            if file is not None:
                file.close()
            if partial_path is not None:
                partial_path.unlink(missing_ok=True)

    async def _download(self, url: str, file: IO[bytes], label: str, index: int, *, saving: bool) -> str:
        """Stream the image into ``file`` under a process-wide download slot; its real type."""
        out = _Gathered(file, self._files)
        try:
            async with self._downloads:
                kind = await _fetch.fetch(self._http, url, out.write, self._rules())
                await out.flush()
                return kind
        except IncompleteImage as exc:
            raise _Stop(f"{label}: {exc.message}; not saved or previewed") from None
        except DownloadError as exc:
            raise _Stop(f"{label}: {exc.message}") from None
        except OSError as exc:  # writing the download: a full disk, a folder gone
            raise _Stop(self._save_note(index, exc) if saving else f"{label}: no room for the download") from None

    @property
    def output_dir(self) -> Path:
        """The folder for saved images: under OAuth, a subfolder of the signed-in person's own."""
        person = acting_person()
        return self._output_root if person is None else self._output_root / person.folder

    @output_dir.setter
    def output_dir(self, folder: Path) -> None:
        self._output_root = folder

    def _open_partial(self) -> tuple[Path, IO[bytes]]:
        """A new file beside the targets, renamed over one when whole: a reader never sees half an image."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / f".partial-{secrets.token_hex(8)}"
        return path, open(path, "x+b")  # the caller closes it; honours the umask, unlike mkstemp

    def _place(self, partial_path: Path, name: str) -> Path:
        target = self.output_dir / name
        os.replace(partial_path, target)
        return target

    def _save_note(self, index: int, exc: OSError) -> str:
        return (
            f"could not save image {index + 1} in {self.output_dir} ({exc.strerror or exc}); "
            "set QOLABA_OUTPUT_DIR to a folder this server can write"
        )
