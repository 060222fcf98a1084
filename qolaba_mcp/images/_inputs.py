"""Image inputs from anywhere: one resolver for ``image_urls``, ``reference_images[].url`` and ``mask_url``.

What the agent has is rarely a public URL: it is an image it just generated, a file the user named, or an
attachment. Each input is turned into what the API takes (a URL, or a ``data:`` URI) and into a line for the
ledger that says what it was made from, never the bytes:

- ``http(s)://`` URLs pass through untouched;
- earlier results: ``qolaba://images/<task_id>/<index>`` (the URI our resources use) or ``<task_id>#<index>``,
  looked up in the ledger (or the API) for the image's URL; past the API's retention, a copy this server saved;
- ``data:`` URIs of PNG, JPEG, WebP or GIF are sent labelled with the type their header parses as (whatever the
  label said), size-capped; base64 wrapped in lines (as the ``base64`` tool writes it) is accepted;
- local files (absolute or ``~`` paths, ``file://`` URIs, Windows paths), on stdio only and only under the
  allowed roots (symlinks and ``..`` resolved first), size-capped before reading, sent as a ``data:`` URI.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio

from .._errors import QolabaError
from ..api._wire import GenerateRequest, is_safe_task_id
from ._formats import NotAnImage, parse

# Qolaba keeps a task's results about four hours; after that its image URLs are assumed gone.
RESULT_RETENTION_S = 4 * 3600.0
_IMAGE_URI = re.compile(r"^qolaba://images/(?P<task>[^/]+)/(?P<index>\d{1,4})$")
_TASK_REF = re.compile(r"^(?P<task>[^#\s]+)#(?P<index>\d{1,4})$")
_WINDOWS_PATH = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\[^\\]+\\)")
_DATA_URI = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)
_DEFAULT_FOLDERS = ("Desktop", "Documents", "Downloads", "Pictures")
_NO_WHITESPACE = str.maketrans("", "", " \t\r\n")


class InputError(QolabaError):
    """An image input that cannot be used; the message names the field and the fix."""


@dataclass(frozen=True)
class EarlierImage:
    """An image of an earlier generation: its URL, when it finished, and the file this server saved, if any."""

    url: str
    finished_at: float | None
    saved_file: str | None


# (task_id, index) -> the image, or an InputError saying why not
FindImage = Callable[[str, int], Awaitable[EarlierImage]]


@dataclass(frozen=True)
class Resolved:
    """One input: what the API is sent, and what the ledger records."""

    value: str
    record: str


def default_roots(output_dir: Path) -> list[Path]:
    """The folders local inputs may come from by default: where people keep images, and our saved results.

    Not the whole home folder: dot-folders there hold keys and tokens. Not the working directory: a desktop
    host may start the server anywhere (often ``/``)."""
    home = Path.home()
    return [home / name for name in _DEFAULT_FOLDERS] + [output_dir]


def parse_roots(value: str | None, output_dir: Path) -> list[Path]:
    """QOLABA_INPUT_ROOTS: folders separated by the platform's path separator; unset: the default; ``off``: none."""
    if value is None or not value.strip():
        return default_roots(output_dir)
    if value.strip().lower() == "off":
        return []
    return [Path(part).expanduser() for part in value.split(os.pathsep) if part.strip()]


class InputResolver:
    """Turns each image argument of a request into a URL or ``data:`` URI the API can take."""

    def __init__(self, *, roots: list[Path], max_bytes: int, local_files: bool, find_image: FindImage) -> None:
        self._roots = roots
        self._max_bytes = max_bytes
        self._local_files = local_files
        self._find_image = find_image

    async def resolve_request(self, request: GenerateRequest) -> tuple[GenerateRequest, list[str]]:
        """The request with every image input resolved, and the ledger's record of each (in field order)."""
        updates: dict[str, Any] = {}
        records: list[str] = []
        if request.image_urls:
            resolved = [await self.resolve(f"image_urls[{i}]", url) for i, url in enumerate(request.image_urls)]
            updates["image_urls"] = [item.value for item in resolved]
            records += [f"image_urls[{i}]: {item.record}" for i, item in enumerate(resolved)]
        if request.reference_images:
            references = []
            for i, reference in enumerate(request.reference_images):
                item = await self.resolve(f"reference_images[{i}].url", reference.url)
                references.append(reference.model_copy(update={"url": item.value}))
                records.append(f"reference_images[{i}]: {item.record}")
            updates["reference_images"] = references
        if request.mask_url:
            item = await self.resolve("mask_url", request.mask_url)
            updates["mask_url"] = item.value
            records.append(f"mask_url: {item.record}")
        return (request.model_copy(update=updates) if updates else request), records

    async def resolve(self, field: str, value: str) -> Resolved:
        text = value.strip()
        lower = text[:12].lower()
        if lower.startswith(("http://", "https://")):
            return Resolved(text, text[:300])
        if lower.startswith("data:"):
            return self._data_uri(field, text)
        if match := (_IMAGE_URI.match(text) or _TASK_REF.match(text)):
            return await self._earlier(field, match["task"], int(match["index"]))
        if lower.startswith("qolaba://"):
            raise InputError(
                f"{field}: {text[:100]!r} is not an image of ours: give qolaba://images/<task_id>/<index> as a "
                "result's resource link shows it (index from 0), or <task_id>#<index>."
            )
        if lower.startswith("file:"):
            return await self._local(field, _file_uri_path(field, text))
        if re.match(r"^[a-z][a-z0-9+.-]*://", lower):
            raise InputError(
                f"{field}: {text[:60]!r} uses a scheme the server cannot read; give an http(s) URL, a data: URI, "
                "an earlier result (qolaba://images/<task_id>/<index>) or a local file path."
            )
        return await self._local(field, text)

    def _data_uri(self, field: str, text: str) -> Resolved:
        match = _DATA_URI.match(text)
        if match is None or not match["b64"]:
            raise InputError(f"{field}: a data: URI must be base64, like data:image/png;base64,iVBOR...")
        declared = (match["type"] or "").lower()
        if not declared.startswith("image/"):
            raise InputError(f"{field}: the data: URI holds {declared or 'no media type'}, not an image.")
        payload = text[match.end() :].translate(_NO_WHITESPACE)  # line-wrapped base64 is still base64
        if len(payload) > -(-self._max_bytes // 3) * 4:  # refused by its length, before decoding
            raise InputError(f"{field}: the data: URI holds more than {self._limit()}; send a smaller image.")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"{field}: the data: URI is not valid base64.") from exc
        if len(data) > self._max_bytes:  # the last four characters may hold a byte or two too many
            raise InputError(f"{field}: the data: URI holds more than {self._limit()}; send a smaller image.")
        kind = self._image_kind(field, data, "the data: URI")
        relabelled = f" (labelled {declared})" if declared != kind else ""
        return Resolved(_as_data_uri(kind, data), f"data: URI, {kind}{relabelled}, {len(data)} bytes")

    async def _earlier(self, field: str, task_id: str, index: int) -> Resolved:
        if not is_safe_task_id(task_id):
            raise InputError(f"{field}: {task_id[:80]!r} is not a task_id.")
        try:
            image = await self._find_image(task_id, index)
        except InputError as exc:
            raise InputError(f"{field}: {exc.message}") from exc
        label = f"image {index} of task {task_id}"
        old = image.finished_at is not None and time.time() - image.finished_at > RESULT_RETENTION_S
        if not old:
            return Resolved(image.url, f"{label}: {image.url[:300]}")
        if image.saved_file:  # past the API's retention: the copy this server saved, if it still exists
            try:
                data = await anyio.to_thread.run_sync(self._read_bounded, Path(image.saved_file))
            except OSError:
                data = None
            if data is not None:
                kind = self._image_kind(field, data, "its saved copy")
                return Resolved(_as_data_uri(kind, data), f"{label}, from its saved copy ({len(data)} bytes)")
        raise InputError(
            f"{field}: {label} has expired at the Qolaba API (results are kept about four hours) and no saved "
            "copy exists on this server. Generate it again, or give the image as a file or URL."
        )

    async def _local(self, field: str, text: str) -> Resolved:
        if not self._local_files:
            raise InputError(
                f"{field}: {text[:100]!r} looks like a local path, and this server runs over HTTP: its disk is not "
                "yours. Give a public https URL, a data: URI or an earlier result (qolaba://images/...)."
            )
        path = Path(text).expanduser()
        if _WINDOWS_PATH.match(text) and os.name != "nt":
            raise InputError(f"{field}: {text[:100]!r} is a Windows path, and this server does not run on Windows.")
        if not path.is_absolute():
            raise InputError(
                f"{field}: {text[:100]!r} is a relative path; give the full path (like ~/Pictures/photo.png) or a URL."
            )
        if not self._roots:
            raise InputError(f"{field}: this server reads no local files (QOLABA_INPUT_ROOTS=off); give a URL.")
        data, real = await anyio.to_thread.run_sync(self._read_local, field, path)
        kind = self._image_kind(field, data, real.name)
        return Resolved(_as_data_uri(kind, data), f"local file {real.name}, {len(data)} bytes")

    def _read_local(self, field: str, path: Path) -> tuple[bytes, Path]:
        """The file's bytes, once its real path (symlinks and ``..`` resolved) is under a root and small enough."""
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise InputError(f"{field}: no file at {str(path)[:200]}.") from None
        roots = [root.resolve() for root in self._roots]
        if not any(real.is_relative_to(root) for root in roots):
            shown = ", ".join(str(root) for root in roots)
            raise InputError(
                f"{field}: {str(path)[:200]} is outside the folders this server may read ({shown}). Move the image "
                "into one of them, or add its folder to QOLABA_INPUT_ROOTS."
            )
        try:
            data = self._read_bounded(real, field=field)
        except OSError as exc:
            raise InputError(f"{field}: {real.name} could not be read ({exc.strerror or 'error'}).") from None
        if data is None:
            raise InputError(f"{field}: {real.name} is not a regular file.")
        return data, real

    def _read_bounded(self, path: Path, *, field: str | None = None) -> bytes | None:
        """A regular file's bytes, refused over max_bytes by its size before reading; None for anything else."""
        # Non-blocking: opening a FIFO to read would otherwise wait for a writer that never comes.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            os.close(descriptor)
            return None
        with os.fdopen(descriptor, "rb") as file:
            if info.st_size > self._max_bytes:
                raise InputError(
                    f"{field or 'input'}: {path.name} is {info.st_size} bytes, over the {self._limit()} limit "
                    "(QOLABA_INPUT_MAX_BYTES); send a smaller image."
                )
            data = file.read(self._max_bytes + 1)
        if len(data) > self._max_bytes:
            raise InputError(f"{field or 'input'}: {path.name} is over the {self._limit()} limit.")
        return data

    def _image_kind(self, field: str, data: bytes, what: str) -> str:
        """The type the bytes' header parses as; refused, naming the field, when it does not parse."""
        try:
            return parse(data).mime
        except NotAnImage as exc:
            raise InputError(
                f"{field}: {what} {exc.reason}. Send the image file itself as PNG, JPEG, WebP or GIF (re-export it "
                "if it is damaged)."
            ) from None

    def _limit(self) -> str:
        return f"{self._max_bytes / 1_048_576:g} MiB" if self._max_bytes >= 1_048_576 else f"{self._max_bytes} bytes"


def _as_data_uri(kind: str, data: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _file_uri_path(field: str, text: str) -> str:
    """The local path of a ``file:`` URI (``file:///home/a.png``, ``file:///C:/a.png``, ``file://localhost/a``)."""
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise InputError(f"{field}: {text[:100]!r} names another machine ({parts.netloc}); give a local path.")
    path = unquote(parts.path)
    if re.match(r"^/[A-Za-z]:/", path):  # file:///C:/Users/... on Windows
        return str(PureWindowsPath(path[1:]))
    return path


def has_data_uri(request: GenerateRequest) -> bool:
    """Whether any image input of ``request`` is sent as a ``data:`` URI."""
    values = [*(request.image_urls or []), *(ref.url for ref in request.reference_images or [])]
    values += [request.mask_url] if request.mask_url else []
    return any(value[:5].lower() == "data:" for value in values)
