"""docs/architecture.md's module map matches the package: every module has a row, every row a module, and every
import a module makes of the package is one its row allows (or within its own package)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "qolaba_mcp"
MAP = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
ROW = re.compile(r"^\| `(qolaba_mcp[\w.]*)` \| [^|]+ \|(?P<allowed>[^|]*)\|$", re.MULTILINE)


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_of(path): path for path in sorted(PACKAGE.rglob("*.py"))}
ROWS = {
    match[1]: [f"qolaba_mcp.{name}" for name in re.findall(r"`([\w.]+)`", match["allowed"])]
    for match in ROW.finditer(MAP)
}


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, path: Path) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in it (lazy imports in functions too)."""
    found: set[str] = set()
    package = _package_of(module, path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            # "from . import _fetch" imports a module; "from .x import Name" imports from one
            found.update(name for name in names if name in MODULES)
            if not any(name in MODULES for name in names):
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "qolaba_mcp" or name.startswith("qolaba_mcp.")}


def test_every_module_has_a_row_and_every_row_a_module() -> None:
    assert set(ROWS) == set(MODULES), {"no row": set(MODULES) - set(ROWS), "no module": set(ROWS) - set(MODULES)}


def _forbidden(module: str, targets: set[str]) -> list[str]:
    """The imports of ``targets`` that ``module``'s row does not allow (a subpackage's own modules always are)."""
    own = _package_of(module, MODULES[module])
    allowed = ROWS.get(module, [])
    return [
        target
        for target in sorted(targets)
        if target not in ("qolaba_mcp", module)
        and not (own != "qolaba_mcp" and (target == own or target.startswith(own + ".")))
        and not any(target == rule or target.startswith(rule + ".") for rule in allowed)
    ]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_map(module: str) -> None:
    assert _forbidden(module, _imports(module, MODULES[module])) == [], f"{module}: not allowed by docs/architecture.md"


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("qolaba_mcp.api._client", "qolaba_mcp.server._server"),  # the API client knows nothing of MCP
        ("qolaba_mcp.sandbox._routes", "qolaba_mcp.api._client"),  # the sandbox never imports the client
        ("qolaba_mcp._http", "qolaba_mcp.generations._runner"),  # an edge goes through the surface
        ("qolaba_mcp.ledger._sqlite", "qolaba_mcp.money._budget"),  # storage decides no policy
    ],
)
def test_the_map_forbids_what_it_should(module: str, target: str) -> None:
    assert _forbidden(module, {target}) == [target]
