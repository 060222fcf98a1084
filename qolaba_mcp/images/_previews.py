"""Previews: a small JPEG/WebP of an image (long side <= 512 px), and PNG re-encoding, from sniffed, allow-listed bytes.

Only PNG, JPEG, WebP and GIF are decoded, each by its own Pillow plugin alone; a picture declaring more than
``max_pixels`` is refused before any pixel is decoded, and JPEGs are decoded reduced.
"""

from __future__ import annotations

import io
import logging
import os
from typing import IO, TYPE_CHECKING, Literal

from . import _fetch
from ._fetch import DownloadError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("qolaba_mcp.delivery")

PreviewMode = Literal["on", "off", "full"]
PREVIEW_LONG_SIDE = 512
MAX_PIXELS = 40_000_000
UNDECODABLE = "cannot decode: not a supported image"
_PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}


class NoPreview(Exception):
    """Why an image has no preview. ``undecodable``: the bytes are not a whole, usable image."""

    def __init__(self, reason: str, *, undecodable: bool = False) -> None:
        super().__init__(reason)
        self.undecodable = undecodable


def make_preview(
    source: bytes | IO[bytes], kind: str, budget: int, mode: PreviewMode, *, max_pixels: int = MAX_PIXELS
) -> tuple[bytes, str]:
    """The original bytes (mode "full", when they fit) or a JPEG/WebP of long side <= 512 px within budget.

    Raises NoPreview with the reason, written to follow "image N: ".
    """
    file = io.BytesIO(source) if isinstance(source, bytes) else source
    size = file.seek(0, os.SEEK_END)
    with _open(file, kind, max_pixels) as picture:
        if mode == "full" and size <= budget:  # only a sniffed, allow-listed, openable image is inlined as is
            file.seek(0)
            return file.read(), kind
        alpha = picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info
        small = _decode_small(picture, "RGBA" if alpha else "RGB")
        side = PREVIEW_LONG_SIDE
        while side >= 64:
            small.thumbnail((side, side))
            for quality in (80, 65, 50, 35):
                out = io.BytesIO()
                # WebP keeps transparency (a removed background); JPEG is what every host shows.
                small.save(out, format="WEBP" if alpha else "JPEG", quality=quality)
                if out.tell() <= budget:
                    return out.getvalue(), "image/webp" if alpha else "image/jpeg"
            side = int(side * 0.7)
    raise NoPreview(f"no preview fits {budget} bytes")


def _open(file: IO[bytes], kind: str, max_pixels: int) -> Image.Image:
    """The image opened (header only) by the one Pillow plugin for its sniffed type; too many pixels refused.

    Naming the format means Pillow never tries another plugin on host-supplied bytes (EPS would start
    Ghostscript), and importing the four plugins here spares it loading all the others.
    """
    from PIL import GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin  # noqa: F401

    file.seek(0)
    if kind not in _PILLOW_FORMATS or _fetch.sniff(file.read(16)) != kind:
        raise NoPreview(UNDECODABLE, undecodable=True)
    file.seek(0)
    try:
        picture = Image.open(file, formats=[_PILLOW_FORMATS[kind]])
    except Image.DecompressionBombError:  # beyond twice Pillow's own global limit, which it checks first
        raise NoPreview(f"no preview: its declared size is over the {max_pixels / 1e6:g}-megapixel limit") from None
    except Exception as exc:
        raise NoPreview(UNDECODABLE, undecodable=True) from exc
    width, height = picture.size
    if width * height > max_pixels:  # checked on the declared size, before a single pixel is decoded
        picture.close()
        raise NoPreview(f"no preview: {width}x{height} pixels is over the {max_pixels / 1e6:g}-megapixel limit")
    return picture


def _decode_small(picture: Image.Image, target: str) -> Image.Image:
    """The picture decoded, reduced to the preview's size in the target mode, never at full size in colour."""
    from PIL import Image

    side = PREVIEW_LONG_SIDE
    picture.draft("RGB", (side, side))  # JPEG decodes at 1/2 to 1/8 scale, never below the asked size
    try:
        picture.load()
        if picture.mode not in ("L", "LA", "RGB", "RGBA"):
            if max(picture.size) > 2 * side:
                # Palette and odd modes resize only roughly: shrink first, so the colour copy is small.
                scale = 2 * side / max(picture.size)
                size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
                picture = picture.resize(size, Image.Resampling.NEAREST)
            picture = picture.convert(target)
        # reduce() by whole factors first: fast, little memory, and fair once the last step is under 2x.
        picture.thumbnail((side, side), reducing_gap=2.0)
        return picture if picture.mode == target else picture.convert(target)
    except Exception as exc:  # truncated or corrupt data: not a usable image
        log.info("cannot decode an image: %s", exc)
        raise NoPreview(UNDECODABLE, undecodable=True) from exc


def as_png(data: bytes, *, max_pixels: int = MAX_PIXELS) -> bytes:
    """A PNG, JPEG, WebP or GIF image re-encoded as PNG; anything else, or too large, is a DownloadError."""
    kind = _fetch.sniff(data[:16])
    try:
        with _open(io.BytesIO(data), kind or "", max_pixels) as picture:
            out = io.BytesIO()
            picture.save(out, format="PNG")
    except NoPreview as exc:
        raise DownloadError(str(exc).removeprefix("no preview: ")) from None
    except Exception as exc:
        raise DownloadError(UNDECODABLE) from exc
    return out.getvalue()
