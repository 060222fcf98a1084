"""The README and docs/ stay true: every setting, every flag of every command's --help and every command is
documented; the README stays short; every relative link and anchor in README.md and docs/ points at something."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qolaba_mcp._cli import build_parser
from qolaba_mcp._config import Settings

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {path.name: path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md"))}
EVERYTHING = "\n".join([README, *DOCS.values()])
README_MAX_LINES = 300


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_env_var_is_documented_in_the_readme_table(field: str) -> None:
    assert f"| `QOLABA_{field.upper()}` |" in README


def _parsers() -> dict[str, object]:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    return {"qolaba-mcp": parser, **{f"qolaba-mcp {name}": sub for name, sub in commands.items()}}


def _flags() -> list[tuple[str, str]]:
    found = set()
    for command, parser in _parsers().items():
        for action in parser._actions:  # type: ignore[attr-defined]
            found.update((command, flag) for flag in action.option_strings if flag not in ("-h", "--help"))
    return sorted(found)


@pytest.mark.parametrize(("command", "flag"), _flags())
def test_every_flag_in_help_is_documented(command: str, flag: str) -> None:
    """Each flag --help prints, for the server and every command, is named in a table row of README or docs/."""
    rows = [line for line in EVERYTHING.splitlines() if line.startswith("|")]
    assert any(re.search(rf"`{re.escape(flag)}[ `=\[]", row) for row in rows), f"{command} {flag}"


def test_every_command_is_documented() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"| `{name}` |" in README


def test_the_readme_stays_short() -> None:
    assert len(README.splitlines()) <= README_MAX_LINES


def test_every_docs_page_is_linked_from_the_readme() -> None:
    for name in DOCS:
        assert f"](docs/{name})" in README, name


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def _links() -> list[tuple[str, str]]:
    pages = {"README.md": README, **{f"docs/{name}": text for name, text in DOCS.items()}}
    return [
        (page, target)
        for page, text in pages.items()
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not re.match(r"[a-z]+:", target)  # http(s):, mailto: ... are not ours to check here
    ]


@pytest.mark.parametrize(("page", "target"), _links())
def test_relative_links_and_anchors_resolve(page: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    where = (ROOT / page).parent / path if path else ROOT / page
    assert where.exists(), f"{page} links to {target}, which does not exist"
    if anchor:
        assert anchor in _anchors(where.read_text(encoding="utf-8")), f"{page}: no heading for #{anchor} in {path}"
