"""Fetching one image URL safely: the rules every image download follows, wherever the URL came from.

- http and https only, a URL that parses, a port that exists;
- public addresses only: the host name is resolved here, every address it has is checked, and the connection goes
  to a checked address (Host header and TLS SNI keep the name), so a second DNS answer cannot swap in another; the
  API's own origin is trusted as the API is, and ``allow_private`` lifts the rule;
- redirects followed by hand, each hop checked the same way, at most ``MAX_REDIRECTS``;
- status 200, an ``image/*`` label and no content encoding, then the bytes themselves must be PNG, JPEG, WebP or
  GIF (the label is not trusted), under a byte cap and complete; all of it within one deadline.

Every refusal is a ``DownloadError`` whose message is written for the model.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import httpx2

from .._errors import QolabaError

MAX_REDIRECTS = 5
NOT_PUBLIC = "not fetched: its address is not public (set QOLABA_DOWNLOAD_ALLOW_PRIVATE=true to allow)"
NOT_SUPPORTED = "not a supported image (only PNG, JPEG, WebP and GIF bytes are accepted)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SNIFF_BYTES = 16  # enough for every signature below and WebP's declared length
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Origin = tuple[str, str, int]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DownloadError(QolabaError):
    """An image could not be fetched within the rules (address, scheme, status, type, size, time)."""


class IncompleteImage(DownloadError):
    """The body ended before the image did: it must not be saved or shown as if whole."""


@dataclass(frozen=True, kw_only=True)
class Rules:
    trusted: frozenset[Origin] = frozenset()
    allow_private: bool = False
    max_bytes: int = 50 * 1024 * 1024
    timeout: float = 30.0


def sniff(head: bytes) -> str | None:
    """The type the bytes really are, from their signature; anything but the four image types is None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def looks_complete(kind: str, head: bytes, tail: bytes, size: int) -> bool:
    """Whether the bytes end where their format says they end (a cut-short body usually still decodes, partly)."""
    if kind == "image/png":
        return tail.endswith(b"IEND\xaeB`\x82")
    if kind == "image/jpeg":
        return tail.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")  # some encoders pad after the end marker
    if kind == "image/gif":
        return tail.rstrip(b"\x00").endswith(b";")
    return int.from_bytes(head[4:8], "little") + 8 <= size  # WebP: the RIFF header declares the length


def origin_of(url: str | httpx2.URL) -> Origin | None:
    """(scheme, host, port) with the port made explicit; None for what does not parse as http(s)."""
    try:
        parsed = httpx2.URL(url)
        port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    except (httpx2.InvalidURL, ValueError, TypeError, UnicodeError):
        return None
    if port is None or not parsed.host:
        return None
    return parsed.scheme, parsed.raw_host.decode("ascii").lower(), port


def is_public(address: Address) -> bool:
    """A globally routable unicast address; an IPv6 form that embeds an IPv4 address is judged by that address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
        if address.is_site_local:
            return False
    # is_global alone lets multicast and (for IPv6) reserved ranges such as ::a.b.c.d through.
    return address.is_global and not (address.is_multicast or address.is_reserved)


async def fetch(http: httpx2.AsyncClient, url: str, write: Callable[[bytes], Awaitable[object]], rules: Rules) -> str:
    """Stream the image at ``url`` into ``write``; its real type. The deadline covers DNS, redirects and the body."""
    try:
        with anyio.fail_after(rules.timeout):
            current = _parse(url)
            for _ in range(MAX_REDIRECTS + 1):
                response = await _send(http, current, rules)
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location is not None:
                        current = _parse(_join(current, location))
                        continue
                    return await _read(response, write, rules)
                finally:
                    await response.aclose()
    except TimeoutError:
        raise DownloadError(f"not fetched within {rules.timeout:g} s") from None
    raise DownloadError(f"not fetched: more than {MAX_REDIRECTS} redirects")


def _parse(url: str | httpx2.URL) -> httpx2.URL:
    try:
        parsed = httpx2.URL(url)
        port = parsed.port
    except (httpx2.InvalidURL, ValueError, TypeError, UnicodeError):
        raise DownloadError("not fetched: its URL is not valid") from None
    if parsed.scheme not in ("http", "https"):
        raise DownloadError(f"refusing to download {str(url)[:80]!r}: only http and https URLs are fetched")
    if not parsed.host or (port is not None and not 0 < port < 65536):
        raise DownloadError("not fetched: its URL is not valid")
    return parsed


def _join(base: httpx2.URL, location: str) -> httpx2.URL:
    try:
        return base.join(location)
    except (httpx2.InvalidURL, ValueError, TypeError, UnicodeError):
        raise DownloadError("not fetched: it redirected to a URL that is not valid") from None


async def _send(http: httpx2.AsyncClient, url: httpx2.URL, rules: Rules) -> httpx2.Response:
    """The response to a GET of ``url``, connected only to an address the rules allow."""
    if rules.allow_private or origin_of(url) in rules.trusted:
        return await _get(http, url)
    failure: httpx2.ConnectError | None = None
    for address in await _public_addresses(url):
        try:
            return await _get(http, url, address)
        except httpx2.ConnectError as exc:  # the next address may answer, as a browser would try it
            failure = exc
    raise DownloadError(f"image download failed ({type(failure).__name__})")


async def _public_addresses(url: httpx2.URL) -> list[str]:
    """Every address of the URL's host, all of them checked: one non-public answer refuses the whole name."""
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        raise DownloadError("not fetched: its host name could not be resolved") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    try:
        public = bool(addresses) and all(is_public(ipaddress.ip_address(a.partition("%")[0])) for a in addresses)
    except ValueError:  # an address family this check does not know
        public = False
    if not public:
        raise DownloadError(NOT_PUBLIC)
    return addresses


async def _get(http: httpx2.AsyncClient, url: httpx2.URL, address: str | None = None) -> httpx2.Response:
    """GET ``url``, at ``address`` when given: the request still names the host (Host header, TLS SNI)."""
    # Images gain nothing from compression, and a compressed body can inflate a thousandfold in one chunk.
    headers = {"Accept-Encoding": "identity"}
    if address is None:
        request = http.build_request("GET", url, headers=headers)
    elif url.scheme == "https":
        # The pool knows this connection by its address alone: closing it after one answer keeps another host
        # at the same address from being served over a TLS session verified for this one.
        request = http.build_request(
            "GET",
            url.copy_with(host=address),
            headers={**headers, "Host": url.netloc.decode("ascii"), "Connection": "close"},
            extensions={"sni_hostname": url.raw_host.decode("ascii")},
        )
    else:
        request = http.build_request(
            "GET", url.copy_with(host=address), headers={**headers, "Host": url.netloc.decode("ascii")}
        )
    try:
        return await http.send(request, stream=True, follow_redirects=False)
    except httpx2.ConnectError:
        if address is None:
            raise DownloadError("image download failed (ConnectError)") from None
        raise
    except httpx2.HTTPError as exc:
        raise DownloadError(f"image download failed ({type(exc).__name__})") from exc


async def _read(response: httpx2.Response, write: Callable[[bytes], Awaitable[object]], rules: Rules) -> str:
    """Check the answer, then stream its body to ``write`` once the first bytes show a supported image."""
    if response.status_code != 200:
        raise DownloadError(f"image download answered {response.status_code}")
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type.startswith("image/"):
        raise DownloadError(f"image download sent {content_type or 'no content type'}, not an image")
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise DownloadError(f"image download sent {encoding[:40]}-encoded data, which is not unpacked")
    declared = _content_length(response)
    if declared is not None and declared > rules.max_bytes:
        raise DownloadError(
            f"image of {declared} bytes is over the {rules.max_bytes}-byte download cap (QOLABA_DOWNLOAD_MAX_BYTES)"
        )
    head, tail, size = b"", b"", 0
    kind: str | None = None
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > rules.max_bytes:
                raise DownloadError(
                    f"image is over the {rules.max_bytes}-byte download cap (QOLABA_DOWNLOAD_MAX_BYTES)"
                )
            if kind is None:  # nothing is written before the signature says what the bytes are
                head += chunk
                if len(head) < _SNIFF_BYTES:
                    continue
                kind = _supported(head)
                chunk, head = head, head[:_SNIFF_BYTES]
            tail = (tail + chunk[-_SNIFF_BYTES:])[-_SNIFF_BYTES:]
            await write(chunk)
    except httpx2.HTTPError as exc:
        raise IncompleteImage(
            f"the image arrived incomplete: the download broke off after {size} bytes ({type(exc).__name__})"
        ) from exc
    if kind is None:  # a body shorter than the sniffed prefix
        kind = _supported(head)
        tail = head[-_SNIFF_BYTES:]
        await write(head)
    if declared is not None and response.num_bytes_downloaded < declared:
        raise IncompleteImage(f"the image arrived incomplete: {response.num_bytes_downloaded} of {declared} bytes")
    if not looks_complete(kind, head, tail, size):
        raise IncompleteImage(
            f"the image arrived incomplete: the {kind.removeprefix('image/').upper()} data is cut short"
        )
    return kind


def _supported(head: bytes) -> str:
    kind = sniff(head)
    if kind is None:
        raise DownloadError(NOT_SUPPORTED)
    return kind


def _content_length(response: httpx2.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None
