"""Reading a request's input images: data: URIs and the sandbox's own image URLs, never the network."""

from __future__ import annotations

import io
import re
from urllib.parse import urlsplit

from PIL import Image

from ._draw import decode_data_uri, load_image

MAX_INPUT_BYTES = 10 * 1024 * 1024  # one input image file, decoded from its data: URI


def source_shape(source: bytes, long_side: int) -> tuple[int, int] | None:
    """The source image's proportions at ``long_side`` pixels on its longer side (read from its header only)."""
    try:
        with Image.open(io.BytesIO(source)) as image:
            w, h = image.size
    except (OSError, ValueError):
        return None
    if w <= 0 or h <= 0:
        return None
    scale = long_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


_OWN_IMAGE = re.compile(r"/_sandbox/images/([^/]+)/([0-9]{1,6})\.png")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def own_image(url: str, base_url: str) -> tuple[str, int] | None:
    """The task id and index of one of this sandbox's image URLs (same scheme, host and port), else None."""
    try:
        parts, base = urlsplit(url), urlsplit(base_url)
        port, base_port = parts.port, base.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (scheme, parts.hostname, port or _DEFAULT_PORTS.get(scheme)) != (
        base.scheme,
        base.hostname,
        base_port or _DEFAULT_PORTS.get(base.scheme),
    ):
        return None
    prefix = base.path.rstrip("/")
    found = _OWN_IMAGE.fullmatch(parts.path.removeprefix(prefix)) if parts.path.startswith(prefix) else None
    if found is None or parts.query or parts.fragment:
        return None
    return found[1], int(found[2])


def read_data_uri(uri: str) -> bytes:
    """The image file in a data: URI, decoded once now so that bad pixel data is refused at submission."""
    data = decode_data_uri(uri, max_bytes=MAX_INPUT_BYTES)
    load_image(data).close()
    return data
