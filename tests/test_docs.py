"""The README stays true: every setting and every CLI flag it should document, it documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qolaba_mcp._cli import build_parser
from qolaba_mcp._config import Settings

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_env_var_is_documented(field: str) -> None:
    assert f"`QOLABA_{field.upper()}`" in README


def _flags() -> list[str]:
    parser = build_parser()
    parsers = [parser, *parser._subparsers._group_actions[0].choices.values()]  # type: ignore[union-attr]
    flags = {opt for p in parsers for action in p._actions for opt in action.option_strings}
    return sorted(flags - {"-h", "--help"})


@pytest.mark.parametrize("flag", _flags())
def test_every_flag_is_documented(flag: str) -> None:
    assert re.search(rf"`{re.escape(flag)}[ `=\[]", README), flag


def test_every_command_is_documented() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"| `{name}` |" in README
