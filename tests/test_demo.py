"""`qolaba-mcp demo` (what `make demo` runs) works on its own and writes valid PNGs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image


def test_demo_writes_pngs_and_shows_progress(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QOLABA_")}
    done = subprocess.run(
        [sys.executable, "-m", "qolaba_mcp", "demo", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "list_models:" in done.stdout and "PROCESSING" in done.stdout and "[###" in done.stdout
    assert "reported cost: 12.0 credits" in done.stdout
    pngs = sorted((tmp_path / "out").glob("*.png"), key=lambda path: path.stat().st_mtime_ns)
    assert len(pngs) == 3  # two generated, then the first one's cut-out
    for png in pngs:
        assert str(png) in done.stdout
    for png in pngs[:2]:
        with Image.open(png) as image:
            image.load()
            assert image.size == (1280, 720) and image.mode == "RGB"
    with Image.open(pngs[2]) as cutout:
        alpha = cutout.convert("RGBA").getchannel("A")
        assert alpha.getextrema() == (0, 255)  # transparent where the background was, opaque elsewhere
    assert "the API received image_urls[0]: image 0 of task task_" in done.stdout


def test_live_demo_needs_a_key() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QOLABA_")}
    done = subprocess.run(
        [sys.executable, "-m", "qolaba_mcp", "demo", "--live"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2 and "QOLABA_API_KEY" in done.stderr
