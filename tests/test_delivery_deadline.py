"""The time promise includes delivery: a call returns within its wait (plus a few seconds) whatever an image host
does; images not fetched by then are saved in the background and shown by get_task once saved.

The image host trickles over real loopback HTTP (tests/hostile.py); the end-to-end test runs the real server over
stdio with the hostile server as the API too. It takes about ten seconds because the trickle must outlast the
call's promised time for the background save to be tested at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp.types import ImageContent

from qolaba_mcp.api._wire import ImageOutput
from qolaba_mcp.images._delivery import Delivery
from qolaba_mcp.sandbox._png import render_png

from .conftest import connect
from .hostile import HostileServer, hang_reply, json_reply, raw_reply, trickle_reply
from .results import data

pytestmark = pytest.mark.anyio

PNG = render_png(width=96, height=64, key="deadline")
STILL_SAVING = "still saving in the background; get_task shows the path when saved"


@pytest.fixture
def host() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def trickled(host: HostileServer, path: str, seconds: float) -> str:
    """An image sent in twenty pieces over ``seconds``."""
    piece = len(PNG) // 20 + 1
    host.route("GET", path, trickle_reply(200, PNG, content_type="image/png", every=seconds / 20, chunk=piece))
    return host.url(path)


async def test_a_save_the_call_cannot_wait_for_goes_on_and_is_reported(host: HostileServer, tmp_path: Path) -> None:
    slow = trickled(host, "/slow.png", 4)  # long past the deadline, which leaves the good image time on a busy machine
    host.route("GET", "/good.png", raw_reply(200, PNG, content_type="image/png"))
    saved_late: dict[int, str] = {}
    reported = anyio.Event()

    async def on_saved(index: int, path: str) -> None:
        saved_late[index] = path
        reported.set()

    delivery = Delivery(output_dir=tmp_path, allow_private=True, min_deliver_seconds=1)
    async with delivery:
        started = time.monotonic()
        images = [ImageOutput(url=slow), ImageOutput(url=host.url("/good.png"))]
        delivered = await delivery.deliver("t1", images, save=True, deadline=1, on_saved=on_saved)
        assert time.monotonic() - started < 3  # the trickle takes 4 s
        assert delivered.notes == [f"image 1: {STILL_SAVING}"]
        assert delivered.saved[0] is None and delivered.saved[1] is not None
        assert [preview.index for preview in delivered.previews] == [1]
        with anyio.fail_after(10):
            await reported.wait()
        assert Path(saved_late[0]).read_bytes() == PNG
        # once saved, the file is previewed from disk: the host is not asked again
        again = await delivery.deliver("t1", images, save=True, known=[saved_late[0], delivered.saved[1]])
    assert again.saved == [saved_late[0], delivered.saved[1]] and again.notes == []
    assert [preview.index for preview in again.previews] == [0, 1]
    assert host.count("GET", "/slow.png") == 1 and host.count("GET", "/good.png") == 1


async def test_on_shutdown_background_saves_get_a_grace_then_stop(host: HostileServer, tmp_path: Path) -> None:
    host.route("GET", "/hang.png", hang_reply())
    delivery = Delivery(output_dir=tmp_path, allow_private=True, min_deliver_seconds=0.1, shutdown_grace=0.3)
    with anyio.fail_after(10):
        async with delivery:
            delivered = await delivery.deliver("t1", [ImageOutput(url=host.url("/hang.png"))], save=True, deadline=0)
    assert delivered.notes == ["image 1: still saving in the background; it will be in " + str(tmp_path)]
    assert list(tmp_path.iterdir()) == []  # the partial file went with the cancelled save


async def test_a_call_returns_in_time_and_get_task_shows_the_file_saved_later(
    host: HostileServer, tmp_path: Path
) -> None:
    """wait_seconds=1 against an image that takes 7.5 s: the call must return within 6 s (the promise), with the URL
    and a note; get_task then shows the saved file once the background save ends."""
    url = trickled(host, "/slow.png", 7.5)
    body = {"task_id": "t1", "model": "vertex/nano-banana-flash", "images": [{"url": url}], "usage": {}}
    host.route("POST", "/api/v1/images/generate", json_reply(200, body))
    call = {"model": "vertex/nano-banana-flash", "prompt": "x", "mode": "sync", "wait_seconds": 1, "save": True}
    env = {"QOLABA_OUTPUT_DIR": str(tmp_path), "QOLABA_DOWNLOAD_ALLOW_PRIVATE": "true"}
    async with connect("memory", "auto", base_url=host.base_url, **env) as client:
        started = time.monotonic()
        with anyio.fail_after(60):  # a bound on a hang; the promise is asserted below
            result = await client.call_tool("generate_image", call)
        elapsed = time.monotonic() - started
        assert elapsed <= 1 + 5, elapsed
        assert not result.is_error, result.content
        first = data(result)
        assert [image["url"] for image in first["images"]] == [url]
        assert first["notes"] == [f"image 1: {STILL_SAVING}"] and first["saved_files"] == []
        with anyio.fail_after(30):
            while True:
                task = await client.call_tool("get_task", {"task_id": "t1"})
                if data(task)["saved_files"]:
                    break
                assert data(task)["notes"] == [f"image 1: {STILL_SAVING}"]
                await anyio.sleep(0.25)  # polling interval, not a wait for a state
    [path] = data(task)["saved_files"]
    assert Path(path).read_bytes() == PNG and data(task)["notes"] == []
    assert [block.mime_type for block in task.content if isinstance(block, ImageContent)] == ["image/jpeg"]
    assert host.count("GET", "/slow.png") == 1  # the preview came from the saved file
