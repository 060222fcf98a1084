"""The sandbox's pictures, checked by their pixels: captions, cut-outs, inpainting, edits, references, bad inputs."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from qolaba_mcp.sandbox._draw import InputImageError, decode_data_uri, load_image, render

GREEN = (0, 255, 0)


def _render(**changes: Any) -> Image.Image:
    arguments: dict[str, Any] = {
        "prompt": "a red fox in the snow",
        "model": "vertex/imagen-4",
        "seed": 1,
        "width": 256,
        "height": 256,
        "index": 0,
        "capabilities": ["text-to-image"],
        "sources": [],
        "references": [],
        "mask": None,
    }
    picture = Image.open(io.BytesIO(render(**{**arguments, **changes})))
    picture.load()
    return picture


def _png(picture: Image.Image, image_format: str = "PNG") -> bytes:
    out = io.BytesIO()
    picture.save(out, format=image_format)
    return out.getvalue()


def _mean_difference(first: Image.Image, second: Image.Image) -> float:
    """Mean absolute difference per channel, 0 to 255."""
    return sum(ImageStat.Stat(ImageChops.difference(first, second)).mean) / len(first.getbands())


def _noise(width: int, height: int) -> Image.Image:
    """A source where every pixel differs from its neighbours, so a changed pixel cannot go unnoticed."""
    return Image.frombytes("RGB", (width, height), random.Random(0).randbytes(width * height * 3)).convert("RGBA")


def _count(picture: Image.Image, colour: tuple[int, int, int]) -> int:
    rgb = picture.convert("RGB")
    solid = Image.new("RGB", rgb.size, colour)
    same = ImageChops.difference(rgb, solid).convert("L").point([255] + [0] * 255)
    return int(ImageStat.Stat(same).sum[0]) // 255


def _white_text_pixels(picture: Image.Image, box: tuple[int, int, int, int]) -> int:
    """Pixels bright in every channel: on the darkened caption panel, only text is that bright."""
    channels = picture.convert("RGB").crop(box).split()
    darkest = ImageChops.darker(ImageChops.darker(channels[0], channels[1]), channels[2])
    return int(ImageStat.Stat(darkest.point([0] * 230 + [255] * 26)).sum[0]) // 255


def _circle_on_white(size: int = 256) -> Image.Image:
    source = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    middle, radius = size // 2, size // 4
    ImageDraw.Draw(source).ellipse((middle - radius,) * 2 + (middle + radius,) * 2, fill=(255, 0, 0, 255))
    return source


_MODES: dict[str, dict[str, Any]] = {
    "text-to-image": {},
    "editing": {"capabilities": ["image-editing"], "sources": [_circle_on_white()]},
    "background-removal": {"capabilities": ["background-removal"], "sources": [_circle_on_white()]},
    "inpainting": {
        "capabilities": ["inpainting"],
        "sources": [_circle_on_white()],
        "mask": Image.new("L", (256, 256), 255),
    },
}


# --- every mode ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(_MODES))
def test_the_same_inputs_give_the_same_bytes(mode: str) -> None:
    arguments: dict[str, Any] = {"prompt": "p", "model": "m", "seed": 5, "width": 300, "height": 200, "index": 2}
    arguments |= {"capabilities": ["text-to-image"], "sources": [], "references": [], "mask": None} | _MODES[mode]
    first, second = render(**arguments), render(**arguments)
    assert first == second
    assert first.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("mode", "colour_mode"),
    [("text-to-image", "RGB"), ("editing", "RGB"), ("inpainting", "RGB"), ("background-removal", "RGBA")],
)
def test_the_picture_has_the_asked_size_and_mode(mode: str, colour_mode: str) -> None:
    picture = _render(width=320, height=180, **_MODES[mode])
    assert picture.size == (320, 180)
    assert picture.mode == colour_mode


@pytest.mark.parametrize("mode", ["text-to-image", "editing"])
def test_different_seeds_give_visibly_different_pictures(mode: str) -> None:
    first, second = _render(seed=1, **_MODES[mode]), _render(seed=2, **_MODES[mode])
    assert _mean_difference(first, second) > 20


def test_the_image_index_changes_the_picture() -> None:
    assert _mean_difference(_render(index=0), _render(index=1)) > 20


# --- the caption --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("long_prompt", ["a very long prompt about a lighthouse " * 40, "x" * 4000])
def test_the_prompt_is_drawn_in_the_caption_panel(long_prompt: str) -> None:
    panel = (0, 0, 512, 100)  # the caption's top lines at 512x512: the prompt's first lines, then the details
    short = _white_text_pixels(_render(prompt="A", width=512, height=512), panel)
    long = _white_text_pixels(_render(prompt=long_prompt, width=512, height=512), panel)
    assert short > 100  # the model and seed lines are drawn even for a one-letter prompt
    assert long > 2 * short  # three full lines of prompt


def test_the_caption_scales_with_the_picture() -> None:
    # The same text at twice the size covers about four times the pixels.
    small = _white_text_pixels(_render(width=512, height=512), (0, 0, 512, 512))
    large = _white_text_pixels(_render(width=1024, height=1024), (0, 0, 1024, 1024))
    assert large > 2.5 * small


def test_the_caption_names_a_missing_seed_as_random() -> None:
    picture = _render(seed=None)
    assert "seed: random" in picture.info["Description"]
    assert "vertex/imagen-4" in picture.info["Description"]
    assert _render(seed=None).tobytes() == picture.tobytes()


def test_a_prompt_with_control_characters_and_surrogates_still_renders() -> None:
    picture = _render(prompt="tab\there\x00nul \ud800 lone")
    assert "\x00" not in picture.info["Description"]


# --- background removal -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(256, 256), (300, 180)])
def test_background_removal_makes_the_background_transparent(size: tuple[int, int]) -> None:
    width, height = size
    picture = _render(width=width, height=height, **_MODES["background-removal"])
    alpha = picture.getchannel("A")
    for corner in [(0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1), (5, height // 2)]:
        assert alpha.getpixel(corner) == 0
    assert picture.getpixel((width // 2, height // 2)) == (255, 0, 0, 255)


def test_background_removal_keeps_a_source_s_own_transparency() -> None:
    source = _circle_on_white()
    source.putalpha(Image.new("L", source.size, 0))
    picture = _render(capabilities=["background-removal"], sources=[source])
    assert picture.getchannel("A").getbbox() is None  # nothing opaque: the source had nothing opaque


# --- inpainting ---------------------------------------------------------------------------------------------------


def _rectangle_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def test_inpainting_changes_only_the_white_part_of_the_mask() -> None:
    source = _noise(256, 256)
    box = (64, 80, 191, 175)  # inclusive corners
    picture = _render(capabilities=["inpainting"], sources=[source], mask=_rectangle_mask((256, 256), box))
    changed = ImageChops.difference(picture, source.convert("RGB"))
    inside = changed.crop((box[0], box[1], box[2] + 1, box[3] + 1))
    changed.paste((0, 0, 0), (box[0], box[1], box[2] + 1, box[3] + 1))
    assert changed.getbbox() is None  # every pixel outside the rectangle is exactly the source's
    unchanged = _count(inside, (0, 0, 0))
    assert unchanged < 0.05 * inside.width * inside.height


def test_inpainting_follows_the_mask_s_shape_and_threshold() -> None:
    source = _noise(256, 256)
    mask = Image.new("L", (256, 256), 127)  # grey just under the threshold: neither repainted nor blended
    ImageDraw.Draw(mask).ellipse((48, 48, 207, 207), fill=128)  # a circle just at the threshold: repainted
    picture = _render(capabilities=["inpainting"], sources=[source], mask=mask)
    circle = mask.point([0] * 128 + [255] * 128)
    changed = ImageChops.difference(picture, source.convert("RGB")).convert("L").point([0] + [255] * 255)
    # Outside the circle, even in the corners of its bounding box, every pixel is the source's.
    assert ImageChops.subtract(changed, circle).getbbox() is None
    assert ImageStat.Stat(ImageChops.multiply(changed, circle)).sum[0] > 0.95 * ImageStat.Stat(circle).sum[0]


def test_inpainting_resizes_source_and_mask_to_the_picture() -> None:
    source = Image.new("RGBA", (300, 200), (10, 120, 200, 255))
    mask = _rectangle_mask((150, 100), (50, 25, 99, 74))  # the middle third across, half down
    picture = _render(width=600, height=400, capabilities=["inpainting"], sources=[source], mask=mask)
    outside = picture.copy()
    outside.paste((10, 120, 200), (196, 96, 404, 304))  # the scaled rectangle (200..399, 100..299) and 4 pixels more
    assert _count(outside, (10, 120, 200)) == 600 * 400
    inside = picture.crop((204, 104, 396, 296))
    assert _count(inside, (10, 120, 200)) < 0.05 * inside.width * inside.height


def test_inpainting_with_a_black_mask_returns_the_source() -> None:
    source = _noise(128, 96)
    mask = Image.new("L", (128, 96), 127)  # just under the threshold
    picture = _render(width=128, height=96, capabilities=["inpainting"], sources=[source], mask=mask)
    assert picture.tobytes() == source.convert("RGB").tobytes()


def test_inpainting_draws_the_caption_inside_the_mask() -> None:
    source = Image.new("RGBA", (512, 512), (0, 0, 0, 255))
    box = (128, 128, 383, 383)
    mask = _rectangle_mask((512, 512), box)
    arguments: dict[str, Any] = {"width": 512, "height": 512, "capabilities": ["inpainting"], "sources": [source]}
    short = _render(prompt="A", mask=mask, **arguments)
    long = _render(prompt="the lighthouse " * 30, mask=mask, **arguments)
    panel = (box[0], box[1], box[2] + 1, box[1] + 60)
    assert _white_text_pixels(long, panel) > 2 * _white_text_pixels(short, panel) > 0
    outside = (0, 0, 512, box[1])
    assert _white_text_pixels(long, outside) == 0  # the source above the mask stays black


# --- editing and references ---------------------------------------------------------------------------------------


def test_an_edit_follows_the_source() -> None:
    source = Image.new("RGBA", (256, 256), (255, 255, 255, 255))
    source.paste((0, 0, 0, 255), (0, 0, 128, 256))  # left half black
    picture = _render(capabilities=["image-editing"], sources=[source]).convert("L")
    band = 80, 220  # below the caption panel; no references are drawn
    left = ImageStat.Stat(picture.crop((0, band[0], 128, band[1]))).mean[0]
    right = ImageStat.Stat(picture.crop((128, band[0], 256, band[1]))).mean[0]
    assert right - left > 80


@pytest.mark.parametrize("mode", ["text-to-image", "editing", "inpainting"])
def test_a_reference_appears_in_the_picture(mode: str) -> None:
    reference = Image.new("RGBA", (64, 64), (*GREEN, 255))
    arguments = _MODES[mode]
    assert _count(_render(**arguments), GREEN) == 0
    assert _count(_render(references=[reference], **arguments), GREEN) > 0.02 * 256 * 256


def test_many_references_each_get_a_thumbnail() -> None:
    colours = [(0, 255, 0), (255, 0, 255), (0, 0, 255)]
    references = [Image.new("RGB", (40, 80), colour) for colour in colours]
    picture = _render(width=512, height=512, references=references)
    for colour in colours:
        assert _count(picture.crop((0, 384, 512, 512)), colour) > 500


# --- data URIs ----------------------------------------------------------------------------------------------------

_TINY_PNG = _png(Image.new("RGB", (3, 2), (1, 2, 3)))


def _uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def test_a_data_uri_gives_back_its_bytes() -> None:
    assert decode_data_uri(_uri(_TINY_PNG), max_bytes=10_000) == _TINY_PNG
    assert decode_data_uri(_uri(_TINY_PNG, "IMAGE/PNG").replace("data:", "DATA:"), max_bytes=10_000) == _TINY_PNG


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("https://example.com/cat.png", "not a data URI"),
        ("data:image/png;base64", "no ','"),
        ("data:image/png," + "x" * 20, "not base64-encoded"),
        ("data:image/png;base64,@@@@not-base64", "not valid base64"),
        ("data:text/plain;base64,aGVsbG8=", "'text/plain', not an image"),
        (_uri(b"hello, I am not a picture at all"), "not a PNG, JPEG, WebP or GIF"),
        (_uri(b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"), "declared image/svg+xml"),
        (_uri(b"BM" + bytes(60), "image/bmp"), "not a PNG, JPEG, WebP or GIF"),
        ("data:image/png;base64,", "not a PNG, JPEG, WebP or GIF"),
    ],
)
def test_a_bad_data_uri_is_refused_naming_the_problem(uri: str, problem: str) -> None:
    with pytest.raises(InputImageError) as caught:
        decode_data_uri(uri, max_bytes=10_000)
    assert problem in str(caught.value)


def test_an_oversized_data_uri_is_refused_before_decoding() -> None:
    # Not base64 at all: only a check of the length before decoding can report the size.
    with pytest.raises(InputImageError, match=r"too large.*limit of 1000 bytes"):
        decode_data_uri("data:image/png;base64," + "@" * 1400, max_bytes=1000)


def test_the_size_limit_is_exact() -> None:
    for size in (len(_TINY_PNG), len(_TINY_PNG) + 1, len(_TINY_PNG) + 2):
        data = _TINY_PNG + bytes(size - len(_TINY_PNG))
        assert decode_data_uri(_uri(data), max_bytes=size) == data
        with pytest.raises(InputImageError, match="too large"):
            decode_data_uri(_uri(data), max_bytes=size - 1)


# --- loading images -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "GIF"])
def test_the_four_formats_load_as_rgba(image_format: str) -> None:
    picture = load_image(_png(Image.new("RGB", (40, 30), (200, 10, 10)), image_format))
    assert (picture.mode, picture.size) == ("RGBA", (40, 30))
    red, green, blue, alpha = picture.getpixel((20, 15))  # type: ignore[misc]
    assert red > 150 and green < 60 and blue < 60 and alpha == 255


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size but holds no pixels: decoding it would fail, or allocate gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(50_000, 50_000), (7_000, 7_000), (40_001, 1_000)])
def test_too_many_pixels_are_refused_from_the_header(width: int, height: int) -> None:
    with pytest.raises(InputImageError, match="40-megapixel limit"):
        load_image(_png_header_only(width, height))


def test_too_many_pixels_are_refused_even_without_pillows_own_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(InputImageError, match="50000x50000 pixels, over the 40-megapixel limit"):
        load_image(_png_header_only(50_000, 50_000))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(_png(Image.new("RGB", (8, 8)), "BMP"), "not a PNG, JPEG, WebP or GIF", id="bmp"),
        pytest.param(_png(Image.effect_noise((64, 64), 50))[:2000], "truncated", id="cut-short"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"garbage" * 4, "no valid IHDR header", id="bad-header"),
    ],
)
def test_unusable_bytes_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(InputImageError, match=problem):
        load_image(data)
