"""A bad QOLABA_MODELS_FILE is a CatalogFileError naming the file and the fix, never a crash at start-up."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qolaba_mcp.api._catalog import BUILTIN_MODELS, MAX_MODELS_FILE_BYTES, Catalog, CatalogFileError
from qolaba_mcp.sandbox import SandboxServer

from .conftest import connect

DEPTH = 200_000  # far past the recursion limit: json.loads raises RecursionError, not JSONDecodeError


def deeply_nested(path: Path) -> None:
    path.write_text("[" * DEPTH + "]" * DEPTH, encoding="utf-8")


def just_over_the_cap(path: Path) -> None:
    path.write_bytes(b"[" + b" " * MAX_MODELS_FILE_BYTES + b"]")


def fifo(path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)


def text_file(content: str, encoding: str = "utf-8") -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content.encode(encoding))


def many_bad_keys(path: Path) -> None:
    path.write_text(json.dumps([{"id": "a", **{f"colour_{i}": 1 for i in range(10_000)}}]), encoding="utf-8")


BAD_FILES: list[tuple[str, Callable[[Path], None], str]] = [
    ("deeply nested", deeply_nested, "nests too deeply"),
    ("over the size cap", just_over_the_cap, "limit for a models file"),
    ("malformed", text_file("{not json"), "cannot read JSON"),
    ("not UTF-8 (UTF-16)", text_file('[{"id": "x/y"}]', "utf-16"), "not UTF-8"),
    ("not UTF-8 (Latin-1)", text_file('[{"id": "caf\xe9"}]', "latin-1"), "not UTF-8"),
    ("an integer too long to convert", text_file("[" + "9" * 10_000 + "]"), "cannot read JSON"),
    ("a directory", lambda path: path.mkdir(), "is a directory"),
    ("a FIFO (opening it would block)", fifo, "not a regular file"),
    ("missing", lambda path: None, "cannot read it"),
    ("a list of non-objects", text_file("[1, 2, 3]"), "expected a list of models"),
    ("a list of lists", text_file("[[], []]"), "expected a list of models"),
    ("models is not a list", text_file('{"models": "all"}'), "expected a list of models"),
    ("null", text_file("null"), "expected a list of models"),
    ("10,000 unknown keys", many_bad_keys, "and 9995 more"),
]


@pytest.mark.parametrize(("make", "fragment"), [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_bad_models_file_is_a_catalog_file_error(tmp_path: Path, make: Callable[[Path], None], fragment: str) -> None:
    path = tmp_path / "models.json"
    make(path)
    caught: list[BaseException] = []

    def load() -> None:
        try:
            Catalog.load(path)
        except BaseException as exc:
            caught.append(exc)

    # In a thread, so that a load that blocks (opening a FIFO does) fails the test instead of hanging it.
    loading = threading.Thread(target=load, daemon=True)
    loading.start()
    loading.join(60)
    assert not loading.is_alive(), "Catalog.load blocked"
    assert len(caught) == 1 and isinstance(caught[0], CatalogFileError), caught
    message = str(caught[0])
    assert fragment in message and f"QOLABA_MODELS_FILE {path}" in message, message
    assert len(message) < 5_000  # it is shown to the model in list_models


def test_a_file_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_bytes(json.dumps([{"id": "x/y"}]).encode("utf-8-sig"))
    assert "x/y" in Catalog.load(path)


def test_a_file_at_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    body = json.dumps([{"id": "x/y"}]).encode()
    path.write_bytes(body + b" " * (MAX_MODELS_FILE_BYTES - len(body)))
    assert "x/y" in Catalog.load(path)


@pytest.mark.anyio
async def test_server_starts_with_a_deeply_nested_file_and_says_so(sandbox: SandboxServer, tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    deeply_nested(path)
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_MODELS_FILE=str(path)) as client:
        result = await client.call_tool("list_models", {})
    assert not result.is_error
    data: Any = result.structured_content
    assert [m["id"] for m in data["models"]] == [m.id for m in BUILTIN_MODELS]
    assert len(data["warnings"]) == 1 and str(path) in data["warnings"][0] and "nests too deeply" in data["warnings"][0]
