"""The sdist and the wheel: built the standard way, accepted by twine, holding the right files, and working when
installed into a fresh environment (and under uvx).

Slow by nature (a build in an isolated environment, a fresh install from PyPI): marked `artifacts`, so `make dist`
runs these and `make test` does not.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import StdioServerParameters

from qolaba_mcp import __version__
from tests.artifacts import FIRST_START, ROOT, clean_env, generate, text, tool

pytestmark = pytest.mark.artifacts


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("*.whl")
    return wheel


def test_twine_accepts_both(dist: Path) -> None:
    files = sorted(str(path) for path in dist.iterdir())
    assert [Path(name).name for name in files] == [
        f"qolaba_mcp-{__version__}-py3-none-any.whl",
        f"qolaba_mcp-{__version__}.tar.gz",
    ]
    done = subprocess.run([tool("twine"), "check", "--strict", *files], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_wheel_holds_the_package_and_nothing_else(dist: Path) -> None:
    with zipfile.ZipFile(_wheel(dist)) as archive:
        names = archive.namelist()
    assert "qolaba_mcp/gallery/gallery.html" in names and "qolaba_mcp/py.typed" in names
    assert {name.split("/")[0] for name in names} == {"qolaba_mcp", f"qolaba_mcp-{__version__}.dist-info"}
    assert not [name for name in names if "/tests/" in name or "/docs/" in name or name.endswith(".pyc")]


def test_the_sdist_holds_what_a_distributor_needs_to_run_the_tests(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    top = f"qolaba_mcp-{__version__}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(top) for name in archive.getnames()}
    needed = {
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "server.json",
        "qolaba_mcp/gallery/gallery.html",
        "qolaba_mcp/py.typed",
        "tests/conftest.py",
        "tests/test_registry.py",
        "tests/test_docs.py",
        "docs/tools.md",
        "scripts/bundle/manifest.json",
        "scripts/bundle/package-lock.json",
    }
    assert needed <= names, sorted(needed - names)
    assert not [name for name in names if "node_modules" in name or "__pycache__" in name or ".venv" in name]


@pytest.mark.anyio
async def test_the_wheel_runs_from_a_fresh_environment(dist: Path, tmp_path: Path) -> None:
    """Installed alone into a new venv: --version, --help and a sandbox generation saved to the output folder."""
    uv, venv = tool("uv"), tmp_path / "venv"
    env = clean_env()
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], env=env, check=True, timeout=120)
    python = venv / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(python), str(_wheel(dist))],
        env=env,
        check=True,
        timeout=FIRST_START,
    )
    command = str(python.parent / "qolaba-mcp")
    version = subprocess.run([command, "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert version.stdout.strip() == f"qolaba-mcp {__version__}", version.stderr
    shown = subprocess.run([command, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0 and "--sandbox" in shown.stdout

    saved = tmp_path / "images"
    params = StdioServerParameters(command=command, args=["--sandbox"], env={**env, "QOLABA_OUTPUT_DIR": str(saved)})
    names, result = await generate(params)
    assert "generate_image" in names and not result.is_error, text(result)
    assert list(saved.glob("*.png"))


@pytest.mark.anyio
async def test_the_wheel_runs_under_uvx(dist: Path, tmp_path: Path) -> None:
    saved = tmp_path / "images"
    env = clean_env(QOLABA_OUTPUT_DIR=str(saved))
    params = StdioServerParameters(
        command=tool("uvx"), args=["--from", str(_wheel(dist)), "qolaba-mcp", "--sandbox"], env=env
    )
    names, result = await generate(params)
    assert "generate_image" in names and not result.is_error, text(result)
    assert list(saved.glob("*.png"))
