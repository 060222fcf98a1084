"""Deterministic PNG pictures for the sandbox: real files, cheap to make at any size, no imaging library."""

from __future__ import annotations

import hashlib
import struct
import zlib
from functools import lru_cache


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=32)
def render_png(*, width: int, height: int, key: str) -> bytes:
    """An RGB gradient unique to ``key``; the same key and size always give the same bytes."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    left = [40 + digest[i] * 160 // 255 for i in range(3)]
    right = [40 + digest[i + 3] * 160 // 255 for i in range(3)]
    drop = [digest[i + 6] * 80 // 255 - 40 for i in range(3)]  # how each channel moves top to bottom

    first = bytearray(width * 3)
    span = max(width - 1, 1)
    for x in range(width):
        for c in range(3):
            first[x * 3 + c] = left[c] + (right[c] - left[c]) * x // span
    # Later rows use PNG's "Up" filter: each row stores only its difference from the row above, which
    # here is the same small step for every pixel, so a 4K picture costs little to build and compress.
    rows = [b"\x00" + bytes(first)]
    steps: dict[tuple[int, int, int], bytes] = {}
    for y in range(1, height):
        delta = tuple((d * y // height - d * (y - 1) // height) % 256 for d in drop)
        row = steps.get(delta)  # type: ignore[arg-type]
        if row is None:
            row = steps[delta] = b"\x02" + bytes(delta) * width  # type: ignore[index]
        rows.append(row)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(b"".join(rows), 6)),
            _chunk(b"IEND", b""),
        )
    )
