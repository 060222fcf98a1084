"""The MCP Bundle: built reproducibly, matching server.json, and running when started the way its manifest says.

Slow by nature (npm's mcpb CLI, and uv resolving the dependencies from PyPI on a first run): marked `artifacts`,
so `make bundle` runs these and `make test` does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import StdioServerParameters

from tests.artifacts import FIRST_START, ROOT, clean_env, generate, text, tool

pytestmark = pytest.mark.artifacts

BUILD = ROOT / "scripts" / "bundle" / "build.py"
SERVER = json.loads((ROOT / "server.json").read_text(encoding="utf-8"))


def build_bundle(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out), "--allow-dirty", "--no-server-json", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tool("node")
    if not (ROOT / "scripts" / "bundle" / "node_modules" / ".bin" / "mcpb").exists():
        subprocess.run([tool("npm"), "ci", "--no-audit", "--no-fund"], cwd=BUILD.parent, check=True, timeout=300)
    out = tmp_path_factory.mktemp("bundle")
    done = build_bundle(out)
    assert done.returncode == 0, done.stderr
    (found,) = out.glob("*.mcpb")
    yield found


def unpack(bundle: Path, into: Path) -> dict[str, Any]:
    """What a host does with a .mcpb: a zip, extracted; its manifest."""
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(into)
    return dict(json.loads((into / "manifest.json").read_text(encoding="utf-8")))


def launch(manifest: dict[str, Any], folder: Path, answers: dict[str, object]) -> StdioServerParameters:
    """The command a host starts: mcp_config with ${__dirname}, ${HOME}... and ${user_config.x} substituted.

    A user_config field left empty takes its default, else the empty string; booleans and numbers arrive as text.
    """
    config = manifest["server"]["mcp_config"]
    values = {key: spec.get("default", "") for key, spec in manifest["user_config"].items()}
    values.update(answers)
    home = Path.home()
    known = {
        "__dirname": str(folder),
        "HOME": str(home),
        "DESKTOP": str(home / "Desktop"),
        "DOCUMENTS": str(home / "Documents"),
        "DOWNLOADS": str(home / "Downloads"),
        "pathSeparator": os.sep,
        "/": os.sep,
    }

    def fill(value: str) -> str:
        def one(match: re.Match[str]) -> str:
            name = match[1]
            if name.startswith("user_config."):
                given = values[name.removeprefix("user_config.")]
                return str(given).lower() if isinstance(given, bool) else fill(str(given))
            return known[name]

        return re.sub(r"\$\{([^}]+)\}", one, value)

    env = clean_env(**{key: fill(value) for key, value in config.get("env", {}).items()})
    command = config["command"]
    if command == "uv":  # the host brings uv; here it is the venv's
        command = tool("uv")
    return StdioServerParameters(command=command, args=[fill(arg) for arg in config["args"]], env=env)


def test_the_build_is_reproducible_and_server_json_has_its_hash(bundle: Path, tmp_path: Path) -> None:
    """Rebuilt from the same sources, the bytes are the same; server.json names this release and its SHA-256."""
    done = build_bundle(tmp_path)
    assert done.returncode == 0, done.stderr
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert hashlib.sha256((tmp_path / bundle.name).read_bytes()).hexdigest() == digest
    (entry,) = [p for p in SERVER["packages"] if p["registryType"] == "mcpb"]
    assert entry["fileSha256"] == digest, "server.json is stale: run `make bundle` and commit server.json"
    assert entry["identifier"].endswith(f"/v{SERVER['version']}/{bundle.name}")


def test_the_bundle_holds_only_what_the_uv_server_type_needs(bundle: Path, tmp_path: Path) -> None:
    manifest = unpack(bundle, tmp_path)
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {
        "manifest.json",
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "icon.png",
        "launch.py",
        "qolaba_mcp",
    }
    assert "qolaba_mcp/gallery/gallery.html" in names and "qolaba_mcp/py.typed" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    # every file the manifest names is in the bundle
    named = [manifest["icon"], manifest["server"]["entry_point"]]
    named += [arg.split("${__dirname}/", 1)[1] for arg in manifest["server"]["mcp_config"]["args"] if "}/" in arg]
    for name in named:
        assert (tmp_path / name).is_file(), name
    assert bundle.name == f"qolaba-mcp-{manifest['version']}.mcpb"
    assert bundle.stat().st_size < 300_000


def test_a_manifest_the_cli_rejects_fails_the_build(tmp_path: Path) -> None:
    """The pinned mcpb validates before anything is zipped: a broken manifest is a failed build, nothing written."""
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import build\n"
        "manifest = json.loads(build.MANIFEST.read_text())\n"
        "manifest['server']['type'] = 'ruby'\n"
        "build.MANIFEST = build.Path(sys.argv[2]) / 'manifest.json'\n"
        "build.MANIFEST.write_text(json.dumps(manifest))\n"
        "raise SystemExit(build.main(['--out', sys.argv[2], '--allow-dirty', '--no-server-json']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(BUILD.parent), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "mcpb validate rejected the bundle" in done.stderr, done.stderr
    assert not list(tmp_path.glob("*.mcpb"))


def _first_start(params: StdioServerParameters) -> None:
    """Start the bundle's command once without a client: uv resolves and installs here, with a generous timeout."""
    done = subprocess.run(
        [params.command, *params.args, "--version"], env=params.env, capture_output=True, text=True, timeout=FIRST_START
    )
    assert done.returncode == 0 and "qolaba-mcp" in done.stdout, done.stderr


@pytest.mark.anyio
async def test_the_bundle_runs_as_a_host_starts_it(bundle: Path, tmp_path: Path) -> None:
    """Unpacked and started from its manifest (uv, the sandbox, the form's answers): it lists its tools, saves a
    generation in the chosen folder, and refuses one over the daily budget without saving anything."""
    folder = tmp_path / "extension"
    manifest = unpack(bundle, folder)
    pictures, refused_dir = tmp_path / "Pictures", tmp_path / "Refused"
    answers: dict[str, object] = {"sandbox": True, "output_dir": str(pictures)}
    params = launch(manifest, folder, answers)
    await anyio.to_thread.run_sync(_first_start, params)

    names, result = await generate(params)
    assert names == [entry["name"] for entry in manifest["tools"]]
    assert not result.is_error, text(result)
    assert list(pictures.glob("*.png")), f"nothing saved in {pictures}: {text(result)}"

    poor = launch(manifest, folder, {**answers, "output_dir": str(refused_dir), "daily_budget_usd": 0.01})
    _, refused = await generate(poor)
    assert refused.is_error and "daily budget" in text(refused) and "Nothing was submitted" in text(refused)
    assert not refused_dir.exists() or not list(refused_dir.iterdir())


@pytest.mark.anyio
async def test_without_a_key_it_starts_and_says_where_to_set_one(bundle: Path, tmp_path: Path) -> None:
    """The form's key left empty, no sandbox: the server still starts, and a call names the extension's settings."""
    folder = tmp_path / "extension"
    manifest = unpack(bundle, folder)
    params = launch(manifest, folder, {"output_dir": str(tmp_path / "out")})
    await anyio.to_thread.run_sync(_first_start, params)
    names, result = await generate(params)
    assert "generate_image" in names
    assert result.is_error and "set your Qolaba API key in the extension's settings" in text(result), text(result)
