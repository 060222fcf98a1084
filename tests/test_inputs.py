"""The image-input resolver on real files: what passes, what is refused, and what the ledger is told."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from qolaba_mcp.api._wire import GenerateRequest, ReferenceImage
from qolaba_mcp.images._inputs import RESULT_RETENTION_S, EarlierImage, InputError, InputResolver, parse_roots

pytestmark = pytest.mark.anyio

MAX = 200_000


def png(size: tuple[int, int] = (8, 8), colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


async def no_earlier(task_id: str, index: int) -> EarlierImage:
    raise InputError(f"no task {task_id!r} is known")


def resolver(root: Path, *, local: bool = True, find=no_earlier, max_bytes: int = MAX) -> InputResolver:  # type: ignore[no-untyped-def]
    return InputResolver(roots=[root], max_bytes=max_bytes, local_files=local, find_image=find)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    allowed = tmp_path / "pictures"
    allowed.mkdir()
    return allowed


async def refused(r: InputResolver, value: str, *fragments: str) -> str:
    with pytest.raises(InputError) as caught:
        await r.resolve("image_urls[0]", value)
    message = caught.value.message
    assert message.startswith("image_urls[0]:"), message
    for fragment in fragments:
        assert fragment in message, message
    return message


async def test_urls_pass_untouched(root: Path) -> None:
    url = "https://cdn.example.com/a b.png?sig=1"
    resolved = await resolver(root).resolve("mask_url", url)
    assert resolved.value == url and resolved.record == url


async def test_data_uris_pass_when_they_hold_an_image(root: Path) -> None:
    image = png()
    resolved = await resolver(root).resolve("image_urls[0]", data_uri(image))
    assert resolved.value == data_uri(image)
    assert resolved.record == f"data: URI, image/png, {len(image)} bytes"
    r = resolver(root)
    await refused(r, "data:text/plain;base64,aGVsbG8=", "text/plain", "not an image")
    await refused(r, "data:image/png,rawtext", "base64")
    await refused(r, "data:image/png;base64,@@@@", "not valid base64")
    await refused(
        r, data_uri(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/png"), "not a PNG, JPEG, WebP or GIF"
    )
    await refused(r, data_uri(b"\x89PNG\r\n\x1a\n" + bytes(MAX)), "more than")


async def test_a_local_file_under_a_root_is_sent_as_a_data_uri(root: Path) -> None:
    image = png((5, 3), "blue")
    (root / "photo.png").write_bytes(image)
    for given in (str(root / "photo.png"), (root / "photo.png").as_uri(), str(root / "sub" / ".." / "photo.png")):
        (root / "sub").mkdir(exist_ok=True)
        resolved = await resolver(root).resolve("image_urls[0]", given)
        assert resolved.value == data_uri(image), given
        assert resolved.record == f"local file photo.png, {len(image)} bytes"
        assert "base64" not in resolved.record


async def test_files_outside_the_roots_are_refused_symlinks_and_dots_resolved_first(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png())
    (root / "link.png").symlink_to(secret)
    r = resolver(root)
    await refused(r, str(secret), "outside the folders", str(root), "QOLABA_INPUT_ROOTS")
    await refused(r, str(root / "link.png"), "outside the folders")
    await refused(r, str(root / ".." / "secret.png"), "outside the folders")
    await refused(r, str(root / "missing.png"), "no file at")


async def test_a_large_file_is_refused_by_its_size_before_it_is_read(root: Path) -> None:
    huge = root / "huge.png"
    with huge.open("wb") as file:  # sparse: 5 GB on paper, nothing on disk; reading it would take minutes
        file.write(png())
        file.truncate(5 * 1024**3)
    started = time.monotonic()
    await refused(resolver(root), str(huge), "huge.png", str(5 * 1024**3), "QOLABA_INPUT_MAX_BYTES")
    assert time.monotonic() - started < 2


async def test_files_that_are_not_images_are_refused(root: Path) -> None:
    (root / "notes.png").write_text("a text file with a png name")
    (root / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    r = resolver(root)
    await refused(r, str(root / "notes.png"), "notes.png is not a PNG, JPEG, WebP or GIF")
    await refused(r, str(root / "drawing.svg"), "drawing.svg is not a PNG")
    os.mkfifo(root / "pipe.png")
    await refused(r, str(root / "pipe.png"), "not a regular file")
    await refused(r, str(root), "not a regular file")


async def test_paths_that_cannot_be_read_here_say_why(root: Path) -> None:
    r = resolver(root)
    await refused(r, "photos/cat.png", "relative path", "full path")
    await refused(r, r"C:\Users\me\Desktop\cat.png", "Windows path")
    await refused(r, "file://nas.local/share/cat.png", "another machine")
    await refused(r, "ftp://example.com/cat.png", "scheme")
    await refused(resolver(root, local=False), str(root / "x.png"), "over HTTP", "its disk is not yours")
    off = InputResolver(roots=[], max_bytes=MAX, local_files=True, find_image=no_earlier)
    await refused(off, str(root / "x.png"), "QOLABA_INPUT_ROOTS=off")


async def test_earlier_results_resolve_to_their_url_or_their_saved_copy(root: Path) -> None:
    saved = root / "task_old_0.png"
    saved.write_bytes(png((4, 4), "green"))
    long_ago = time.time() - RESULT_RETENTION_S - 60
    known = {
        ("task_new", 0): EarlierImage(url="https://api.example/new0.png", finished_at=time.time(), saved_file=None),
        ("task_old", 0): EarlierImage(url="https://api.example/old0.png", finished_at=long_ago, saved_file=str(saved)),
        ("task_gone", 1): EarlierImage(url="https://api.example/gone1.png", finished_at=long_ago, saved_file=None),
    }

    async def find(task_id: str, index: int) -> EarlierImage:
        if (task_id, index) not in known:
            raise InputError(f"no task {task_id!r} is known")
        return known[(task_id, index)]

    r = resolver(root, find=find, local=False)  # earlier results work over HTTP too
    fresh = await r.resolve("image_urls[0]", "qolaba://images/task_new/0")
    assert fresh.value == "https://api.example/new0.png" and "image 0 of task task_new" in fresh.record
    assert (await r.resolve("image_urls[0]", "task_new#0")).value == fresh.value
    old = await r.resolve("image_urls[0]", "qolaba://images/task_old/0")
    assert old.value == data_uri(saved.read_bytes()) and "saved copy" in old.record
    await refused(r, "qolaba://images/task_gone/1", "expired", "no saved copy", "Generate it again")
    await refused(r, "qolaba://images/task_nope/0", "no task 'task_nope'")
    await refused(r, "qolaba://tasks/task_new", "qolaba://images/<task_id>/<index>")


async def test_a_whole_request_is_resolved_field_by_field(root: Path) -> None:
    (root / "mask.png").write_bytes(png((4, 4), "white"))
    request = GenerateRequest(
        model="fal/flux-inpainting",
        prompt="a hat",
        image_urls=["https://x.example/a.png"],
        reference_images=[ReferenceImage(url=data_uri(png()), description="style")],
        mask_url=str(root / "mask.png"),
    )
    resolved, records = await resolver(root).resolve_request(request)
    assert resolved.image_urls == ["https://x.example/a.png"]
    assert resolved.reference_images is not None and resolved.reference_images[0].description == "style"
    assert resolved.mask_url is not None and resolved.mask_url.startswith("data:image/png;base64,")
    assert records == [
        "image_urls[0]: https://x.example/a.png",
        f"reference_images[0]: data: URI, image/png, {len(png())} bytes",
        f"mask_url: local file mask.png, {len(png((4, 4), 'white'))} bytes",
    ]
    with pytest.raises(InputError, match=r"^reference_images\[0\]\.url:"):
        await resolver(root).resolve_request(
            request.model_copy(update={"reference_images": [ReferenceImage(url="relative.png")]})
        )


def test_roots_setting(tmp_path: Path) -> None:
    out = tmp_path / "out"
    defaults = parse_roots(None, out)
    assert out in defaults and Path.home() / "Pictures" in defaults and Path.home() not in defaults
    assert parse_roots("off", out) == []
    assert parse_roots(f"{tmp_path}/a{os.pathsep}~/b", out) == [tmp_path / "a", Path.home() / "b"]


def test_file_uris_name_local_paths_windows_ones_too() -> None:
    from qolaba_mcp.images._inputs import _file_uri_path

    assert _file_uri_path("image_urls[0]", "file:///home/me/My%20Pictures/a.png") == "/home/me/My Pictures/a.png"
    assert _file_uri_path("image_urls[0]", "file://localhost/tmp/a.png") == "/tmp/a.png"
    assert _file_uri_path("image_urls[0]", "file:///C:/Users/me/a.png") == r"C:\Users\me\a.png"


def wrapped(data: bytes, width: int = 76) -> str:
    """Base64 as the ``base64`` tool writes it: lines of 76 characters, CRLF here and there."""
    text = base64.b64encode(data).decode()
    lines = [text[i : i + width] for i in range(0, len(text), width)]
    return "\n".join(lines[:2]) + "\r\n" + "\n".join(lines[2:]) + "\n"


def encoded(fmt: str, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (40, 30)).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("label", "data", "sent_as"),
    [
        pytest.param("image/svg+xml", png(), "image/png", id="svg-label-png-bytes"),
        pytest.param("image/png", encoded("JPEG"), "image/jpeg", id="png-label-jpeg-bytes"),
        pytest.param("image/jpeg", encoded("WEBP"), "image/webp", id="jpeg-label-webp-bytes"),
        pytest.param("image/webp", encoded("GIF", "P"), "image/gif", id="webp-label-gif-bytes"),
        pytest.param("IMAGE/PNG", png(), "image/png", id="upper-case-label"),
    ],
)
async def test_data_uris_are_sent_with_the_type_their_bytes_parse_as(
    root: Path, label: str, data: bytes, sent_as: str
) -> None:
    resolved = await resolver(root).resolve("image_urls[0]", data_uri(data, label))
    assert resolved.value == data_uri(data, sent_as)
    relabelled = f" (labelled {label.lower()})" if label.lower() != sent_as else ""
    assert resolved.record == f"data: URI, {sent_as}{relabelled}, {len(data)} bytes"


async def test_base64_wrapped_in_lines_is_accepted_and_capped_by_its_bytes(root: Path) -> None:
    image = png((64, 64), "green")
    resolved = await resolver(root).resolve("image_urls[0]", f"data:image/png;base64,{wrapped(image)}")
    assert resolved.value == data_uri(image)
    # whitespace does not count against the cap; the decoded bytes do, exactly
    await resolver(root, max_bytes=len(image)).resolve("image_urls[0]", f"data:image/png;base64,{wrapped(image)}")
    await refused(
        resolver(root, max_bytes=len(image) - 1), f"data:image/png;base64,{wrapped(image)}", "more than", "smaller"
    )


@pytest.mark.parametrize(
    ("data", "problems"),
    [
        pytest.param(
            b"\x89PNG\r\n\x1a\n" + b"<!doctype html><html><body>hi</body></html>", ["no valid IHDR"], id="png-html"
        ),
        pytest.param(png()[:20], ["cut short before its IHDR"], id="png-truncated-ihdr"),
        pytest.param(png()[:29] + b"\x00\x00\x00\x00" + png()[33:], ["CRC mismatch"], id="png-bad-crc"),
        pytest.param(b"\xff\xd8\xff\xe0<html>", ["JPEG signature"], id="jpeg-html"),
        pytest.param(b"GIF89a", ["GIF signature", "cut short"], id="gif-truncated"),
    ],
)
async def test_bytes_that_do_not_parse_are_refused_naming_the_field_problem_and_fix(
    root: Path, data: bytes, problems: list[str]
) -> None:
    fix = "Send the image file itself as PNG, JPEG, WebP or GIF"
    await refused(resolver(root), data_uri(data), "the data: URI", *problems, fix)
    (root / "broken.png").write_bytes(data)
    await refused(resolver(root), str(root / "broken.png"), "broken.png", *problems, fix)


async def test_a_local_file_is_sent_with_the_type_it_parses_as(root: Path) -> None:
    jpeg = encoded("JPEG")
    (root / "photo.png").write_bytes(jpeg)  # a JPEG whose name says PNG
    resolved = await resolver(root).resolve("image_urls[0]", str(root / "photo.png"))
    assert resolved.value == data_uri(jpeg, "image/jpeg")
