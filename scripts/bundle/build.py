"""Build dist/qolaba-mcp-<version>.mcpb, the MCP Bundle for Claude Desktop, and record its SHA-256 in server.json.

The bundle is a zip of a staging folder holding only what the manifest's `uv` server type needs (the manifest,
pyproject.toml, the package source, README, LICENSE, icon and the launcher); the host installs the dependencies
with uv. `mcpb pack` stamps every entry with the current time, so the same sources would hash differently on every
build: this script zips the staging folder itself with fixed timestamps, order and permissions, after the pinned
`mcpb validate` accepted its manifest, and checks the result with `mcpb info`, `mcpb unpack` and `mcpb validate`.

Refuses (exit 2, one message) when the versions disagree, the manifest's tools differ from the server's tools/list,
the bundled sources have uncommitted changes (unless --allow-dirty), or the CLI rejects the manifest. Under CI=true
it never rewrites server.json: a stale fileSha256 fails the build instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MCPB = HERE / "node_modules" / ".bin" / ("mcpb.cmd" if os.name == "nt" else "mcpb")
MANIFEST = HERE / "manifest.json"
RELEASES = "https://github.com/qolaba/qolaba-mcp/releases/download"
# What goes into the bundle, relative to the checkout, and where it lands in the bundle.
FILES = {
    "pyproject.toml": "pyproject.toml",
    "README.md": "README.md",
    "LICENSE": "LICENSE",
    "scripts/bundle/icon.png": "icon.png",
    "scripts/bundle/launch.py": "launch.py",
}
PACKAGE = "qolaba_mcp"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: the same for every build


class BuildError(Exception):
    """The bundle cannot be built as asked; the message says why and what to do."""


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"])


def bundle_name(version: str) -> str:
    return f"qolaba-mcp-{version}.mcpb"


def check_versions(manifest: dict[str, Any]) -> str:
    """The one version (pyproject.toml's), after checking the manifest, the installed package and CHANGELOG agree."""
    version = project_version()
    import qolaba_mcp

    found = {
        "scripts/bundle/manifest.json": manifest["version"],
        "the installed package (qolaba-mcp --version; reinstall with make .venv/.installed)": qolaba_mcp.__version__,
    }
    top = re.search(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.MULTILINE)
    found["CHANGELOG.md's newest release"] = top[1] if top else "(none)"
    wrong = [f"{where} says {said}" for where, said in found.items() if said != version]
    if wrong:
        raise BuildError(f"version mismatch: pyproject.toml says {version}, but " + "; ".join(wrong))
    return version


def server_tools() -> list[dict[str, str]]:
    """The tools the server lists, as the manifest's `tools` entries (name and description)."""
    import anyio
    from mcp import Client

    from qolaba_mcp._config import Settings
    from qolaba_mcp.server import build_server

    async def listed() -> list[dict[str, str]]:
        async with Client(build_server(Settings(ledger_url="off"))) as client:
            tools = (await client.list_tools()).tools
        return [{"name": tool.name, "description": tool.description or ""} for tool in tools]

    return anyio.run(listed)


def check_clean() -> None:
    """Refuse to bundle sources with uncommitted changes: the bundle would match no commit."""
    paths = [*FILES, "scripts/bundle/manifest.json", PACKAGE]
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"cannot tell whether the sources are committed ({exc}); pass --allow-dirty") from exc
    if status.strip():
        raise BuildError(
            "uncommitted changes in the bundled sources (commit them, or pass --allow-dirty for a local try):\n"
            + status.rstrip()
        )


def mcpb(*args: str) -> str:
    if not MCPB.exists():
        raise BuildError(f"{MCPB} is missing: run `npm ci` in scripts/bundle (make bundle does)")
    done = subprocess.run([str(MCPB), *args], capture_output=True, text=True, timeout=120)
    said = (done.stdout + done.stderr).strip()
    # `mcpb validate` reports some failures on stdout and exits 0 only when the manifest passes
    if done.returncode != 0 or "ERROR" in said:
        raise BuildError(f"mcpb {' '.join(args[:1])} rejected the bundle:\n{said}")
    return said


def stage(manifest: dict[str, Any], into: Path) -> list[str]:
    """Copy what the bundle holds into ``into``; its paths, sorted, as they will be in the zip."""
    for source, target in FILES.items():
        if not (ROOT / source).is_file():
            raise BuildError(f"{source} is missing")
        (into / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / source, into / target)
    for path in sorted((ROOT / PACKAGE).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            target = into / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    (into / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return sorted(path.relative_to(into).as_posix() for path in into.rglob("*") if path.is_file())


def write_zip(folder: Path, names: list[str], target: Path) -> None:
    """A zip whose bytes depend only on the files: fixed time, order and permissions."""
    with zipfile.ZipFile(target, "w") as archive:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.create_system = 3  # unix, so the permissions below are read
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (folder / name).read_bytes(), compresslevel=9)


def build(out: Path, *, allow_dirty: bool, write_tools: bool) -> Path:
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    version = check_versions(manifest)
    tools = server_tools()
    if manifest["tools"] != tools:
        if not write_tools:
            raise BuildError(
                "scripts/bundle/manifest.json lists other tools than the server's tools/list: "
                "run `python scripts/bundle/build.py --write-tools` and commit the manifest"
            )
        manifest["tools"] = tools
        MANIFEST.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if not allow_dirty:
        check_clean()
    out.mkdir(parents=True, exist_ok=True)
    target = out / bundle_name(version)
    with tempfile.TemporaryDirectory(prefix="qolaba-bundle-") as tmp:
        staging, unpacked = Path(tmp) / "staging", Path(tmp) / "unpacked"
        staging.mkdir()
        names = stage(manifest, staging)
        mcpb("validate", str(staging / "manifest.json"))
        write_zip(staging, names, target)
        mcpb("info", str(target))
        mcpb("unpack", str(target), str(unpacked))  # what a host does with it
        mcpb("validate", str(unpacked / "manifest.json"))
    return target


def record_hash(bundle: Path, version: str) -> str:
    """Point server.json's mcpb package at this release and its SHA-256; under CI, only check it."""
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    path = ROOT / "server.json"
    server = json.loads(path.read_text(encoding="utf-8"))
    entry = next((p for p in server["packages"] if p["registryType"] == "mcpb"), None)
    wanted = {
        "registryType": "mcpb",
        "identifier": f"{RELEASES}/v{version}/{bundle_name(version)}",
        "version": version,
        "fileSha256": digest,
        "transport": {"type": "stdio"},
    }
    if entry == wanted:
        return digest
    if os.environ.get("CI"):
        raise BuildError(
            f"server.json's mcpb package does not match this build (SHA-256 {digest}): run `make bundle` on a clean "
            "checkout and commit server.json"
        )
    if entry is None:
        server["packages"].append(wanted)
    else:
        entry.clear()
        entry.update(wanted)
    path.write_text(json.dumps(server, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="folder for the .mcpb (default: dist/)")
    parser.add_argument("--allow-dirty", action="store_true", help="bundle uncommitted sources (local tries, tests)")
    parser.add_argument("--no-server-json", action="store_true", help="leave server.json alone")
    parser.add_argument("--write-tools", action="store_true", help="rewrite the manifest's tools from tools/list")
    args = parser.parse_args(argv)
    try:
        bundle = build(args.out, allow_dirty=args.allow_dirty, write_tools=args.write_tools)
        digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
        if not args.no_server_json:
            record_hash(bundle, project_version())
    except BuildError as exc:
        print(f"bundle: {exc}", file=sys.stderr)
        return 2
    print(f"{bundle} {bundle.stat().st_size} bytes sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
