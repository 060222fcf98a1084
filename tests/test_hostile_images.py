"""Image hosts that misbehave on purpose: bad URLs, bytes that are not what they claim, decompression bombs,
trickles, private addresses and redirects to them, colliding task ids, truncated bodies.

``Delivery`` is driven directly over real loopback HTTP against ``HostileServer``; two tests go through the real
server over stdio with the hostile server as both the API and the image host.
"""

from __future__ import annotations

import asyncio
import io
import resource
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.types import ImageContent, TextContent
from PIL import EpsImagePlugin, Image, ImageFile

from qolaba_mcp.api._wire import ImageOutput
from qolaba_mcp.images import _delivery, _fetch
from qolaba_mcp.images._delivery import Delivery, DownloadError, NoPreview, as_png, make_preview, safe_name
from qolaba_mcp.sandbox._png import render_png

from .conftest import connect, free_port
from .hostile import Handler, HostileServer, Request, hang_reply, json_reply, raw_reply, redirect_reply, trickle_reply

NOT_PUBLIC = "not fetched: its address is not public (set QOLABA_DOWNLOAD_ALLOW_PRIVATE=true to allow)"
PNG = render_png(width=96, height=64, key="hostile")
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke showpage\n%%EOF\n"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>'
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"


def encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (200, 30, 90) if mode == "RGB" else 128).save(out, format=fmt)
    return out.getvalue()


JPEG, BMP, TIFF = encoded("JPEG"), encoded("BMP"), encoded("TIFF")


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` zeros: tiny on the wire, huge once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte, then the packed bits
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def host() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@pytest.fixture
def other() -> Iterator[HostileServer]:
    """A second loopback server: a different origin from the trusted API's."""
    with HostileServer() as server:
        yield server


@asynccontextmanager
async def delivery_for(host: HostileServer, folder: Path, **options: Any) -> AsyncIterator[Delivery]:
    """A Delivery that trusts ``host`` as the configured API's origin, as the server wires it."""
    delivery = Delivery(output_dir=folder, trusted_origins=frozenset({f"{host.base_url}/api"}), **options)
    try:
        yield delivery
    finally:
        await delivery.aclose()


def images(*urls: str) -> list[ImageOutput]:
    return [ImageOutput(url=url) for url in urls]


def serve(host: HostileServer, path: str, body: bytes, content_type: str = "image/png") -> str:
    host.route("GET", path, raw_reply(200, body, content_type=content_type))
    return host.url(path)


# --- 1. any failure with one image is a note on that image ----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",  # unclosed IPv6 bracket
        "http://h:99999/x",  # no such port
        "http://[::1]:0/x",
        "http://1.2.3.4:-1/x",
        "http://a\x00b/x",  # control characters
        "http://x:1/\r\nX-Injected: y",
        "http://\ud800/x",  # a lone surrogate
        "http://\u00e9x\u2028/x",
        "http:///x",  # no host
        "https://[v1.x]/",
        "ftp://host/x.png",
        "",
        "javascript:alert(1)",
        "h" * 5000,
    ],
)
async def test_a_url_httpx_cannot_take_is_a_note_and_the_other_images_arrive(
    host: HostileServer, tmp_path: Path, url: str
) -> None:
    good = serve(host, "/good.png", PNG)
    async with delivery_for(host, tmp_path) as delivery:
        delivered = await delivery.deliver("t1", images(url, good), save=True)
    assert len(delivered.notes) == 1 and delivered.notes[0].startswith("image 1: "), delivered.notes
    assert [p.index for p in delivered.previews] == [1]
    assert delivered.saved[0] is None and delivered.saved[1] is not None


@pytest.mark.anyio
async def test_an_unforeseen_failure_is_still_only_a_note(
    host: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _delivery.make_preview

    def exploding(source: Any, kind: str, *args: Any, **kwargs: Any) -> tuple[bytes, str]:
        if kind == "image/jpeg":
            raise RecursionError("a bug nobody foresaw")
        return real(source, kind, *args, **kwargs)

    monkeypatch.setattr(_delivery, "make_preview", exploding)
    urls = serve(host, "/a.jpg", JPEG, "image/jpeg"), serve(host, "/b.png", PNG)
    async with delivery_for(host, tmp_path) as delivery:
        delivered = await delivery.deliver("t1", images(*urls), save=False)
    assert delivered.notes == ["image 1: not delivered (RecursionError)"]
    assert [p.index for p in delivered.previews] == [1]


# --- 3. only PNG, JPEG, WebP and GIF are ever decoded, whatever the label --------------------------------------


@pytest.mark.anyio
async def test_postscript_labelled_png_is_refused_and_ghostscript_never_consulted(
    host: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    consulted: list[str] = []

    def record(name: str) -> Any:
        def called(*args: Any, **kwargs: Any) -> Any:
            consulted.append(name)
            raise AssertionError(f"EPS {name} used on host-supplied bytes")

        return called

    # EpsImagePlugin is imported above, so Pillow knows it: it must still never be asked.
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", record("plugin"))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", record("Ghostscript"))
    url = serve(host, "/eps.png", EPS)
    for mode in ("on", "full", "off"):
        async with delivery_for(host, tmp_path, preview=mode) as delivery:
            delivered = await delivery.deliver("t1", images(url), save=True)
        assert delivered.notes == [f"image 1: {_fetch.NOT_SUPPORTED}"] and not delivered.previews
        assert delivered.saved == [None]
    for mode in ("on", "full"):
        with pytest.raises(NoPreview, match="not a supported image"):
            make_preview(EPS, "image/png", 50_000, mode)  # type: ignore[arg-type]
    with pytest.raises(DownloadError, match="not a supported image"):
        as_png(EPS)
    assert consulted == []
    assert list(tmp_path.iterdir()) == []  # no partial file left behind either


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "label"),
    [
        (SVG, "image/svg+xml"),
        (SVG, "image/png"),
        (HTML, "image/png"),
        (BMP, "image/bmp"),  # Pillow reads these; they are still not on the list
        (TIFF, "image/tiff"),
        (b"GIF8", "image/gif"),  # shorter than any signature
    ],
    ids=["svg", "svg-as-png", "html-as-png", "bmp", "tiff", "four-bytes"],
)
async def test_full_mode_never_inlines_what_is_not_an_allowed_image(
    host: HostileServer, tmp_path: Path, body: bytes, label: str
) -> None:
    url = serve(host, "/x", body, label)
    async with delivery_for(host, tmp_path, preview="full", preview_max_bytes=700_000) as delivery:
        delivered = await delivery.deliver("t1", images(url), save=True)
    assert not delivered.previews and delivered.saved == [None]
    assert delivered.notes == [f"image 1: {_fetch.NOT_SUPPORTED}"]


@pytest.mark.anyio
async def test_saved_files_are_named_for_what_the_bytes_are_not_the_label(host: HostileServer, tmp_path: Path) -> None:
    labelled = [(JPEG, "image/png"), (PNG, "image/webp"), (encoded("WEBP"), "image/png"), (encoded("GIF"), "image/x")]
    urls = [serve(host, f"/{number}", body, label) for number, (body, label) in enumerate(labelled)]
    async with delivery_for(host, tmp_path, preview="full") as delivery:
        delivered = await delivery.deliver("t1", images(*urls), save=True)
    assert delivered.notes == []
    assert [Path(path).suffix for path in delivered.saved if path] == [".jpg", ".png", ".webp", ".gif"]
    assert [p.mime_type for p in delivered.previews] == ["image/jpeg", "image/png", "image/webp", "image/gif"]
    assert [Path(path).read_bytes() for path in delivered.saved if path] == [body for body, _ in labelled]


@pytest.mark.anyio
async def test_the_image_resource_converts_only_allowed_types(host: HostileServer, tmp_path: Path) -> None:
    for fmt in ("JPEG", "GIF", "WEBP"):
        assert Image.open(io.BytesIO(as_png(encoded(fmt)))).format == "PNG"
    for body in (EPS, BMP, TIFF, SVG):
        with pytest.raises(DownloadError, match="not a supported image"):
            as_png(body)
    with pytest.raises(DownloadError, match="megapixel limit"):
        as_png(png_declaring(13_000, 13_000))
    async with delivery_for(host, tmp_path) as delivery:
        assert (await delivery.fetch_png(serve(host, "/j", JPEG, "image/png"))).startswith(b"\x89PNG")
        with pytest.raises(DownloadError, match="not a supported image"):
            await delivery.fetch_png(serve(host, "/e", EPS, "image/png"))


# --- 4. bounded memory for any image -----------------------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.anyio
async def test_a_small_png_declaring_13000x13000_is_refused_before_decoding(
    host: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = png_declaring(13_000, 13_000)
    assert len(bomb) < 40_000
    # Pillow's own global guard switched off: the per-call cap must hold by itself.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    url = serve(host, "/bomb.png", bomb)
    before = peak_rss_mb()
    for mode in ("on", "full"):
        async with delivery_for(host, tmp_path, preview=mode, preview_max_bytes=700_000) as delivery:
            delivered = await delivery.deliver("t1", images(url), save=True)
        assert delivered.notes == ["image 1: no preview: 13000x13000 pixels is over the 40-megapixel limit"]
        assert not delivered.previews
        assert delivered.saved[0] is not None  # the file is fine to keep: only decoding it is refused
    assert peak_rss_mb() - before < 150  # decoding it would cost about 900 MB


def test_a_jpeg_preview_is_decoded_reduced(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.BytesIO()
    Image.new("RGB", (4096, 2304), (10, 120, 200)).save(out, format="JPEG")
    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> Any:
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    data, mime = make_preview(out.getvalue(), "image/jpeg", 50_000, "on")
    assert mime == "image/jpeg" and Image.open(io.BytesIO(data)).size == (512, 288)
    assert decoded and max(decoded[0]) <= 1024  # decoded at 1/4 scale, not 4096 px wide


@pytest.mark.anyio
async def test_decodes_are_limited_process_wide(
    host: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock, active, peak = threading.Lock(), [0], [0]
    real = _delivery.make_preview

    def counting(*args: Any, **kwargs: Any) -> tuple[bytes, str]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(_delivery, "make_preview", counting)
    urls = [serve(host, f"/{i}.png", PNG) for i in range(4)]
    async with delivery_for(host, tmp_path, max_decodes=2) as delivery:
        results: list[Any] = []

        async def call(task: str) -> None:
            results.append(await delivery.deliver(task, images(*urls), save=False))

        async with anyio.create_task_group() as group:
            for task in ("t1", "t2", "t3"):
                group.start_soon(call, task)
    assert sum(len(r.previews) for r in results) == 12
    assert 1 <= peak[0] <= 2


def counted(reply: Handler, state: dict[str, int]) -> Handler:
    """``reply``, after a pause, counting the requests in progress at once (on the server's one thread)."""

    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        state["active"] += 1
        state["peak"] = max(state["peak"], state["active"])
        try:
            await asyncio.sleep(0.1)
            await reply(request, writer)
        finally:
            state["active"] -= 1

    return handle


@pytest.mark.anyio
async def test_downloads_are_limited_process_wide(host: HostileServer, tmp_path: Path) -> None:
    state = {"active": 0, "peak": 0}
    for i in range(4):
        host.route("GET", f"/{i}.png", counted(raw_reply(200, PNG, content_type="image/png"), state))
    urls = [host.url(f"/{i}.png") for i in range(4)]
    async with (
        delivery_for(host, tmp_path, max_downloads=3, preview="off") as delivery,
        anyio.create_task_group() as group,
    ):
        for task in ("t1", "t2", "t3"):
            group.start_soon(partial(delivery.deliver, save=True), task, images(*urls))
    assert host.count("GET", "/0.png") == 3
    assert 1 <= state["peak"] <= 3
    assert len(list(tmp_path.iterdir())) == 12


@pytest.mark.anyio
async def test_a_compressed_body_is_never_inflated(host: HostileServer, tmp_path: Path) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip: 200 MB of zeros in about 200 KB
    head = packer.compress(PNG[:16])
    bomb = head + b"".join(packer.compress(bytes(1 << 20)) for _ in range(200)) + packer.flush()
    host.route("GET", "/gz.png", raw_reply(200, bomb, content_type="image/png", headers={"Content-Encoding": "gzip"}))
    before = peak_rss_mb()
    async with delivery_for(host, tmp_path) as delivery:
        delivered = await delivery.deliver("t1", images(host.url("/gz.png")), save=True)
    assert delivered.notes == ["image 1: image download sent gzip-encoded data, which is not unpacked"]
    assert host.requests[0].headers["accept-encoding"] == "identity"
    assert peak_rss_mb() - before < 100


# --- 5. deadlines ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_trickling_host_cannot_hold_the_call(host: HostileServer, tmp_path: Path) -> None:
    host.route("GET", "/slow.png", trickle_reply(200, PNG, content_type="image/png", every=0.5))
    good = serve(host, "/good.png", PNG)
    started = time.monotonic()
    async with delivery_for(host, tmp_path, fetch_timeout=1.0) as delivery:
        delivered = await delivery.deliver("t1", images(host.url("/slow.png"), good), save=True)
    assert time.monotonic() - started < 20  # the whole body would take len(PNG) / 2 seconds
    assert delivered.notes == ["image 1: not fetched within 1 s"]
    assert delivered.saved[0] is None and delivered.saved[1] is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".partial")] == []


@pytest.mark.anyio
async def test_the_whole_delivery_has_a_deadline(host: HostileServer, tmp_path: Path) -> None:
    host.route("GET", "/hang.png", hang_reply())
    good = serve(host, "/good.png", PNG)
    started = time.monotonic()
    async with delivery_for(host, tmp_path, fetch_timeout=60, deliver_timeout=1.0) as delivery:
        delivered = await delivery.deliver("t1", images(host.url("/hang.png"), good), save=True)
    assert time.monotonic() - started < 20
    assert delivered.notes == ["image 1: not delivered within 1 s"]
    assert [p.index for p in delivered.previews] == [1] and delivered.saved[1] is not None


@pytest.mark.anyio
async def test_the_image_resource_fetch_has_the_deadline_too(host: HostileServer, tmp_path: Path) -> None:
    host.route("GET", "/slow.png", trickle_reply(200, PNG, content_type="image/png", every=0.5))
    async with delivery_for(host, tmp_path, fetch_timeout=1.0) as delivery:
        with pytest.raises(DownloadError, match="not fetched within 1 s"):
            await delivery.fetch_png(host.url("/slow.png"))


# --- 6. SSRF: only public addresses, checked where we connect ---------------------------------------------------


@pytest.mark.anyio
async def test_a_url_on_another_loopback_port_is_refused_and_never_reached(
    host: HostileServer, other: HostileServer, tmp_path: Path
) -> None:
    trusted, elsewhere = serve(host, "/a.png", PNG), serve(other, "/b.png", PNG)
    closed = f"http://127.0.0.1:{free_port()}/b.png"
    async with delivery_for(host, tmp_path) as delivery:
        delivered = await delivery.deliver("t1", images(trusted, elsewhere, closed), save=True)
    assert other.requests == []
    # The same words whether something listens there or not: the refusal reveals nothing about the port.
    assert delivered.notes == [f"image 2: {NOT_PUBLIC}", f"image 3: {NOT_PUBLIC}"]
    assert [p.index for p in delivered.previews] == [0]


@pytest.mark.anyio
async def test_a_redirect_from_the_trusted_origin_to_another_loopback_port_is_refused(
    host: HostileServer, other: HostileServer, tmp_path: Path
) -> None:
    target = serve(other, "/b.png", PNG)
    host.route("GET", "/go", redirect_reply(target))
    host.route("GET", "/go-relative", redirect_reply("/a.png", status=307))
    serve(host, "/a.png", PNG)
    async with delivery_for(host, tmp_path) as delivery:
        delivered = await delivery.deliver("t1", images(host.url("/go"), host.url("/go-relative")), save=False)
    assert other.requests == []
    assert delivered.notes == [f"image 1: {NOT_PUBLIC}"]
    assert [p.index for p in delivered.previews] == [1]


@pytest.mark.anyio
async def test_redirects_stop_after_five_hops(host: HostileServer, tmp_path: Path) -> None:
    host.route("GET", "/loop", redirect_reply("/loop", status=301))
    async with delivery_for(host, tmp_path) as delivery:
        delivered = await delivery.deliver("t1", images(host.url("/loop")), save=False)
    assert delivered.notes == ["image 1: not fetched: more than 5 redirects"]
    assert host.count("GET", "/loop") == 6


@pytest.mark.anyio
async def test_private_addresses_are_fetched_with_the_opt_in(
    host: HostileServer, other: HostileServer, tmp_path: Path
) -> None:
    other.route("GET", "/go", redirect_reply(f"http://localhost:{other.port}/b.png"))
    serve(other, "/b.png", PNG)
    async with delivery_for(host, tmp_path, allow_private=True) as delivery:
        delivered = await delivery.deliver("t1", images(other.url("/go")), save=False)
    assert delivered.notes == [] and len(delivered.previews) == 1
    assert other.count("GET", "/b.png") == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "netloc",
    ["localhost", "[::1]", "[::ffff:127.0.0.1]", "2130706433", "0x7f.1", "127.1", "0.0.0.0", "0"],
)
async def test_loopback_in_any_spelling_is_refused(
    host: HostileServer, other: HostileServer, tmp_path: Path, netloc: str
) -> None:
    serve(other, "/b.png", PNG)
    async with delivery_for(host, tmp_path) as delivery:
        delivered = await delivery.deliver("t1", images(f"http://{netloc}:{other.port}/b.png"), save=False)
    assert delivered.notes == [f"image 1: {NOT_PUBLIC}"]
    assert other.requests == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("198.18.0.1", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("0.0.0.0", False),
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("::7f00:1", False),  # IPv4-compatible loopback
        ("64:ff9b::7f00:1", False),
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2001:db8::1", False),
    ],
)
def test_which_addresses_are_public(address: str, public: bool) -> None:
    assert _fetch.is_public(ip_address(address)) is public


@pytest.mark.anyio
async def test_a_checked_address_is_the_one_connected_to_with_the_name_kept() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
        url = httpx2.URL("https://images.example:8443/a.png?sig=1")
        await _fetch._get(http, url, "93.184.216.34")
        await _fetch._get(http, httpx2.URL("http://images.example/b.png"), "2606:2800:220:1::1")
    assert str(seen[0].url) == "https://93.184.216.34:8443/a.png?sig=1"
    assert seen[0].headers["host"] == "images.example:8443"
    assert seen[0].extensions["sni_hostname"] == "images.example" and seen[0].headers["connection"] == "close"
    assert str(seen[1].url) == "http://[2606:2800:220:1::1]/b.png" and seen[1].headers["host"] == "images.example"


# --- 9. file names unique per task and image -------------------------------------------------------------------


@pytest.mark.anyio
async def test_task_ids_that_sanitise_alike_never_share_a_file(host: HostileServer, tmp_path: Path) -> None:
    long = "t" * 150
    ids = ["a.b", "a:b", "a_b", "a/b", "A_B", long, long + "x", long + "y"]
    names = {safe_name(task_id, 0, "image/png") for task_id in ids}
    assert len(names) == len(ids) and all(len(name) < 140 for name in names)
    bodies = {task_id: render_png(width=32, height=32, key=task_id) for task_id in ids}
    async with delivery_for(host, tmp_path, preview="off") as delivery:
        for number, task_id in enumerate(ids):
            url = serve(host, f"/{number}.png", bodies[task_id])
            delivered = await delivery.deliver(task_id, images(url), save=True)
            assert delivered.notes == []
            assert Path(delivered.saved[0] or "").read_bytes() == bodies[task_id]
    assert len(list(tmp_path.iterdir())) == len(ids)
    for task_id in ids:  # nothing was overwritten
        assert (tmp_path / safe_name(task_id, 0, "image/png")).read_bytes() == bodies[task_id]


# --- 13. notes in image order, honest reasons, truncated images not saved as whole -----------------------------


@pytest.mark.anyio
async def test_notes_come_in_image_order(host: HostileServer, tmp_path: Path) -> None:
    host.route("GET", "/slow.png", trickle_reply(200, PNG, content_type="image/png", every=0.5))
    host.route("GET", "/gone.png", raw_reply(404, b"no"))
    urls = host.url("/slow.png"), host.url("/gone.png"), serve(host, "/eps.png", EPS)
    async with delivery_for(host, tmp_path, fetch_timeout=1.0) as delivery:
        delivered = await delivery.deliver("t1", images(*urls), save=False)
    assert delivered.notes == [
        "image 1: not fetched within 1 s",
        "image 2: image download answered 404",
        f"image 3: {_fetch.NOT_SUPPORTED}",
    ]


@pytest.mark.anyio
async def test_bytes_that_do_not_decode_say_so(host: HostileServer, tmp_path: Path) -> None:
    garbage = PNG[:16] + b"\x00" * 200 + PNG[-12:]  # a PNG's signature and its last chunk, nothing usable between
    url = serve(host, "/garbage.png", garbage)
    async with delivery_for(host, tmp_path) as delivery:
        delivered = await delivery.deliver("t1", images(url), save=True)
    assert delivered.notes == ["image 1: cannot decode: not a supported image; not saved"]
    assert delivered.saved == [None] and list(tmp_path.iterdir()) == []


def short_body(body: bytes, declared: int) -> Handler:
    """Headers promising ``declared`` bytes, then ``body``, then the connection closes."""

    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {declared}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()

    return handle


@pytest.mark.anyio
@pytest.mark.parametrize("preview", ["on", "off"])
async def test_a_truncated_image_is_not_saved_as_if_whole(host: HostileServer, tmp_path: Path, preview: str) -> None:
    big = render_png(width=640, height=480, key="truncated")
    host.route("GET", "/short.png", short_body(big[: len(big) // 2], len(big)))  # Content-Length larger than sent
    cut = serve(host, "/cut.png", big[: len(big) - 40])  # an honest length for a body cut before IEND
    cut_jpeg = serve(host, "/cut.jpg", JPEG[: len(JPEG) // 2], "image/jpeg")
    urls = host.url("/short.png"), cut, cut_jpeg
    async with delivery_for(host, tmp_path, preview=preview) as delivery:
        delivered = await delivery.deliver("t1", images(*urls), save=True)
    assert delivered.saved == [None, None, None] and not delivered.previews
    assert len(delivered.notes) == 3
    for number, note in enumerate(delivered.notes, start=1):
        assert note.startswith(f"image {number}: the image arrived incomplete") and note.endswith(
            "not saved or previewed"
        )
    assert list(tmp_path.iterdir()) == []


# --- end to end: the real server over stdio, the hostile server as API and image host --------------------------


def sync_generation(host: HostileServer, *paths: str) -> None:
    body = {
        "task_id": "t1",
        "model": "vertex/nano-banana-flash",
        "images": [{"url": host.url(path) if path.startswith("/") else path} for path in paths],
        "usage": {"images_generated": len(paths)},
    }
    host.route("POST", "/api/v1/images/generate", json_reply(200, body))


CALL = {"model": "vertex/nano-banana-flash", "prompt": "x", "mode": "sync"}


@pytest.mark.anyio
async def test_hostile_images_through_the_real_server(
    host: HostileServer, other: HostileServer, tmp_path: Path
) -> None:
    serve(host, "/eps.png", EPS)
    serve(host, "/jpeg.png", JPEG)
    serve(other, "/private.png", PNG)
    sync_generation(host, "/eps.png", "/jpeg.png", other.url("/private.png"), "/missing.png")
    async with connect("memory", "auto", base_url=host.base_url, QOLABA_OUTPUT_DIR=str(tmp_path)) as client:
        result = await client.call_tool("generate_image", {**CALL, "save": True})
    assert not result.is_error, result.content
    data = result.structured_content or {}
    assert data["notes"] == [
        f"image 1: {_fetch.NOT_SUPPORTED}",
        f"image 3: {NOT_PUBLIC}",
        "image 4: image download answered 404",
    ]
    assert other.requests == []
    assert data["saved_files"][1].endswith(".jpg") and [p is None for p in data["saved_files"]] == [
        True,
        False,
        True,
        True,
    ]
    assert [block.mime_type for block in result.content if isinstance(block, ImageContent)] == ["image/jpeg"]


@pytest.mark.anyio
async def test_a_decompression_bomb_through_the_real_server(host: HostileServer, tmp_path: Path) -> None:
    serve(host, "/bomb.png", png_declaring(13_000, 13_000))
    serve(host, "/good.png", PNG)
    sync_generation(host, "/bomb.png", "/good.png")
    async with connect(
        "memory", "auto", base_url=host.base_url, QOLABA_OUTPUT_DIR=str(tmp_path), QOLABA_PREVIEW="full"
    ) as client:
        result = await client.call_tool("generate_image", {**CALL, "save": False})
    assert not result.is_error, result.content
    data = result.structured_content or {}
    assert data["notes"] == ["image 1: no preview: 13000x13000 pixels is over the 40-megapixel limit"]
    assert [block.mime_type for block in result.content if isinstance(block, ImageContent)] == ["image/png"]
    text = next(block.text for block in result.content if isinstance(block, TextContent))
    assert "megapixel" in text
