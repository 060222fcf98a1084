"""The short fault soak inside `make test`, and the API key's absence from everything the soak produced."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from .soak import run_soak

KEY = "qk_live_9c41e7f0b2d85a63_SECRET"


def test_short_soak_loses_nothing_and_never_double_submits() -> None:
    report = run_soak(calls=50, concurrency=20, latency=0.5)
    print(report.render())
    assert report.calls == 50 and report.lost == 0, report.lost_examples
    assert report.duplicate_submissions == 0 and report.server_crashes == 0
    assert report.succeeded > 25, "most calls should ride out the faults"
    assert sum(report.faults.values()) > 10, "the soak injected too few faults to prove anything"
    assert report.submissions <= report.calls


def test_key_appears_nowhere_at_debug_level(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the sandbox and its uvicorn run in this process
    stderr = tmp_path / "server-stderr.log"
    report = run_soak(calls=20, concurrency=10, latency=0.3, api_key=KEY, log_level="DEBUG", stderr_path=stderr)
    server_log = stderr.read_text(encoding="utf-8")
    assert "DEBUG" in server_log and "/api/v1/tasks/" in server_log, "debug logging did not run"
    assert report.texts, "no results were captured"
    captured = {
        "server stderr": server_log,
        "tool results": "\n".join(report.texts),
        "sandbox and client logs": caplog.text,
    }
    for where, text in captured.items():
        assert KEY not in text, f"the API key leaked into the {where}"
        assert KEY[8:24] not in text, f"part of the API key leaked into the {where}"
