"""The image header parser: Pillow's own files parse to their type and size; corrupted ones are refused with why."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from qolaba_mcp.images._formats import ImageInfo, NotAnImage, parse


def encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (97, 61), **options: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format=fmt, **options)
    return out.getvalue()


PNG = encoded("PNG")
HTML = b"<!doctype html><html><body><script>alert(1)</script></body></html>"


def ihdr(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG signature and a correctly signed IHDR chunk declaring these values."""
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def with_ihdr_crc(data: bytes, crc: int) -> bytes:
    return data[:29] + struct.pack(">I", crc) + data[33:]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(PNG, ImageInfo("image/png", 97, 61), id="png-rgb"),
        pytest.param(encoded("PNG", "P"), ImageInfo("image/png", 97, 61), id="png-palette"),
        pytest.param(encoded("PNG", "1"), ImageInfo("image/png", 97, 61), id="png-1bit"),
        pytest.param(encoded("PNG", "I;16"), ImageInfo("image/png", 97, 61), id="png-16bit"),
        pytest.param(encoded("JPEG"), ImageInfo("image/jpeg", 97, 61), id="jpeg"),
        pytest.param(encoded("JPEG", progressive=True), ImageInfo("image/jpeg", 97, 61), id="jpeg-progressive"),
        pytest.param(
            encoded("JPEG", exif=b"Exif\x00\x00" + bytes(60_000)), ImageInfo("image/jpeg", 97, 61), id="jpeg-exif"
        ),
        pytest.param(encoded("WEBP"), ImageInfo("image/webp", 97, 61), id="webp-lossy"),
        pytest.param(encoded("WEBP", lossless=True), ImageInfo("image/webp", 97, 61), id="webp-lossless"),
        pytest.param(encoded("WEBP", "RGBA", exif=b"Exif\x00\x00x"), ImageInfo("image/webp", 97, 61), id="webp-vp8x"),
        pytest.param(encoded("GIF", "P"), ImageInfo("image/gif", 97, 61), id="gif"),
        pytest.param(ihdr(1, 65_535), ImageInfo("image/png", 1, 65_535), id="png-tall-header-only"),
    ],
)
def test_real_images_parse_to_their_type_and_size(data: bytes, expected: ImageInfo) -> None:
    assert parse(data) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"\x89PNG\r\n\x1a\n" + HTML, "no valid IHDR header", id="png-magic-then-html"),
        pytest.param(PNG[:24], "cut short before its IHDR", id="png-truncated-ihdr"),
        pytest.param(with_ihdr_crc(PNG, zlib.crc32(PNG[12:29]) ^ 1), "CRC mismatch", id="png-bad-crc"),
        pytest.param(ihdr(0, 61), "0x61 pixels", id="png-zero-width"),
        pytest.param(ihdr(8, 8, depth=3), "invalid format", id="png-bad-depth"),
        pytest.param(b"\xff\xd8\xff\xe0" + HTML, "marker segment runs past the end", id="jpeg-magic-then-html"),
        pytest.param(encoded("JPEG")[:20], "cut short before its frame header", id="jpeg-truncated"),
        pytest.param(b"\xff\xd8\xff\xda\x00\x02", "no frame header before its image data", id="jpeg-scan-first"),
        pytest.param(b"RIFF\x10\x00\x00\x00WEBPJUNK" + HTML, "no valid VP8", id="webp-unknown-chunk"),
        pytest.param(encoded("WEBP")[:22], "no valid VP8", id="webp-truncated"),
        pytest.param(b"GIF89a\x01", "cut short before its screen descriptor", id="gif-truncated"),
        pytest.param(b"GIF89a\x00\x00\x10\x00\x00\x00\x00", "0x16 pixels", id="gif-zero-width"),
        pytest.param(b'<svg xmlns="http://www.w3.org/2000/svg"/>', "is not a PNG, JPEG, WebP or GIF", id="svg"),
        pytest.param(encoded("BMP"), "is not a PNG, JPEG, WebP or GIF", id="bmp"),
        pytest.param(b"", "is not a PNG, JPEG, WebP or GIF", id="empty"),
    ],
)
def test_what_does_not_parse_is_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(NotAnImage) as caught:
        parse(data)
    assert reason in caught.value.reason
