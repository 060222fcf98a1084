"""What an image's bytes really are: the header of a PNG, JPEG, WebP or GIF parsed, nothing decoded.

A signature alone is eight bytes anyone can put in front of HTML; the header structure behind it (PNG's IHDR chunk
and its CRC, JPEG's marker segments up to the frame header, WebP's first chunk, GIF's screen descriptor) is what
says the rest is an image of a given size. Every refusal is a ``NotAnImage`` whose reason reads after "it ".
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAX_SIDE = 65_535  # the largest side JPEG and GIF can declare; a PNG claiming more is not an input worth sending
_PNG = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> the bit depths it allows
_PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
# JPEG start-of-frame markers (C4 DHT, C8 JPG and CC DAC share the range but are not frames)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no length


class NotAnImage(ValueError):
    """The bytes are not a PNG, JPEG, WebP or GIF whose header parses; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    mime: str
    width: int
    height: int


def parse(data: bytes) -> ImageInfo:
    """The real type and declared size of ``data`` (a whole file, or at least its header); else NotAnImage."""
    if data.startswith(_PNG):
        return _png(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    raise NotAnImage("is not a PNG, JPEG, WebP or GIF image (its first bytes are none of their signatures)")


def _png(data: bytes) -> ImageInfo:
    if len(data) < 33:
        raise NotAnImage("has a PNG signature but is cut short before its IHDR header ends")
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        raise NotAnImage("has a PNG signature but no valid IHDR header after it (not PNG data)")
    body = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(kind + body) != crc:
        raise NotAnImage("has a PNG signature but its IHDR header is damaged (CRC mismatch)")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
    if depth not in _PNG_DEPTHS.get(colour, set()) or compression or filtering or interlace > 1:
        raise NotAnImage(f"has a PNG header with an invalid format (bit depth {depth}, colour type {colour})")
    return _sized("image/png", width, height)


def _jpeg(data: bytes) -> ImageInfo:
    at = 2
    while True:
        while at < len(data) and data[at] == 0xFF and at + 1 < len(data) and data[at + 1] == 0xFF:
            at += 1  # fill bytes before a marker
        if at + 2 > len(data):
            raise NotAnImage("has a JPEG signature but is cut short before its frame header (no dimensions)")
        if data[at] != 0xFF:
            raise NotAnImage("has a JPEG signature but its marker segments are broken (not JPEG data)")
        marker = data[at + 1]
        at += 2
        if marker in _STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA, 0x00):  # a second start, the end or the scan before any frame header
            raise NotAnImage("has a JPEG signature but no frame header before its image data (no dimensions)")
        if at + 2 > len(data):
            raise NotAnImage("has a JPEG signature but is cut short before its frame header (no dimensions)")
        (length,) = struct.unpack(">H", data[at : at + 2])
        if length < 2 or at + length > len(data):
            raise NotAnImage("has a JPEG signature but a marker segment runs past the end (cut short or not JPEG)")
        if marker in _SOF:
            if length < 8:
                raise NotAnImage("has a JPEG frame header too short to hold the dimensions")
            height, width = struct.unpack(">HH", data[at + 3 : at + 7])
            return _sized("image/jpeg", width, height)
        at += length


def _webp(data: bytes) -> ImageInfo:
    kind, size = data[12:16], len(data) - 20
    chunk = data[20:]
    if kind == b"VP8 " and size >= 10 and chunk[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", chunk[6:10])
        return _sized("image/webp", width & 0x3FFF, height & 0x3FFF)
    if kind == b"VP8L" and size >= 5 and chunk[0] == 0x2F:
        bits = int.from_bytes(chunk[1:5], "little")
        return _sized("image/webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8X" and size >= 10:
        return _sized("image/webp", int.from_bytes(chunk[4:7], "little") + 1, int.from_bytes(chunk[7:10], "little") + 1)
    raise NotAnImage("has a WebP signature but no valid VP8, VP8L or VP8X chunk after it (cut short or not WebP)")


def _gif(data: bytes) -> ImageInfo:
    if len(data) < 13:
        raise NotAnImage("has a GIF signature but is cut short before its screen descriptor")
    width, height = struct.unpack("<HH", data[6:10])
    return _sized("image/gif", width, height)


def _sized(mime: str, width: int, height: int) -> ImageInfo:
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        name = mime.removeprefix("image/").upper()
        raise NotAnImage(f"is a {name} declaring {width}x{height} pixels, not a usable size (1 to {MAX_SIDE} a side)")
    return ImageInfo(mime, width, height)
