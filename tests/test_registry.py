"""server.json stays a valid MCP registry entry that agrees with the package it describes."""

from __future__ import annotations

import json
import os
import re
import tomllib
import typing
from importlib.metadata import version
from pathlib import Path

import anyio
import jsonschema
import pytest
from mcp import Client

import qolaba_mcp
from qolaba_mcp._config import Settings
from qolaba_mcp.server import build_server

ROOT = Path(__file__).parent.parent
SERVER = json.loads((ROOT / "server.json").read_text(encoding="utf-8"))
SCHEMA_PATH = ROOT.parent / "shared" / "schemas" / "server.schema.json"
PACKAGE = SERVER["packages"][0]
ENV = {entry["name"]: entry for entry in PACKAGE["environmentVariables"]}
BUNDLE = json.loads((ROOT / "scripts" / "bundle" / "manifest.json").read_text(encoding="utf-8"))


def test_valid_against_the_registry_schema() -> None:
    if not SCHEMA_PATH.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SCHEMA_PATH} is missing: CI must have shared/ beside the clone")
        pytest.skip(f"{SCHEMA_PATH} not beside this checkout")
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(SERVER), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    assert SERVER["$schema"] == "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"


def test_one_version_everywhere() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", declared), "a semantic version"
    assert version("qolaba-mcp") == qolaba_mcp.__version__ == declared
    assert SERVER["version"] == declared
    assert [package["version"] for package in SERVER["packages"]] == [declared] * len(SERVER["packages"])
    assert BUNDLE["version"] == declared, "scripts/bundle/manifest.json"
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.MULTILINE)[1] == declared  # type: ignore[index]


def test_listing_fields() -> None:
    assert re.fullmatch(r"io\.github\.[A-Za-z0-9-]+/qolaba-mcp", SERVER["name"])
    assert len(SERVER["description"]) <= 100
    assert PACKAGE["registryType"] == "pypi" and PACKAGE["identifier"] == "qolaba-mcp"
    assert PACKAGE["runtimeHint"] == "uvx" and PACKAGE["transport"] == {"type": "stdio"}
    assert f"mcp-name: {SERVER['name']}" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_listed_with_its_default() -> None:
    assert set(ENV) == {f"QOLABA_{name.upper()}" for name in Settings.model_fields}
    key = ENV["QOLABA_API_KEY"]
    assert key["isSecret"] is True and key["isRequired"] is True
    assert ENV["QOLABA_MCP_AUTH_TOKEN"]["isSecret"] is True
    for name, field in Settings.model_fields.items():
        entry = ENV[f"QOLABA_{name.upper()}"]
        assert entry["description"] == field.description
        if name != "api_key":
            assert entry["isRequired"] is False
        default = field.get_default(call_default_factory=True)
        if default in (None, []):
            assert "default" not in entry, name
        else:
            expected = str(default).lower() if isinstance(default, bool) else str(default)
            assert entry["default"] == expected, name
        if typing.get_origin(field.annotation) is typing.Literal:
            assert entry["choices"] == list(typing.get_args(field.annotation))


def test_the_bundle_is_listed_beside_the_pypi_package() -> None:
    """The MCP Bundle's entry: a release download named after the version, with the SHA-256 `make bundle` wrote."""
    (bundle,) = [package for package in SERVER["packages"] if package["registryType"] == "mcpb"]
    assert bundle["identifier"] == (
        f"https://github.com/qolaba/qolaba-mcp/releases/download/v{SERVER['version']}/qolaba-mcp-{SERVER['version']}.mcpb"
    )
    assert re.fullmatch(r"[0-9a-f]{64}", bundle["fileSha256"]) and bundle["transport"] == {"type": "stdio"}


def test_the_bundle_lists_the_tools_the_server_lists() -> None:
    async def listed() -> list[dict[str, str]]:
        async with Client(build_server(Settings(ledger_url="off"))) as client:
            return [{"name": t.name, "description": t.description or ""} for t in (await client.list_tools()).tools]

    assert BUNDLE["tools"] == anyio.run(listed), "run `python scripts/bundle/build.py --write-tools`"


def test_the_bundle_form_sets_our_settings() -> None:
    """Every install-form answer reaches a real setting (or --sandbox), and the key is stored as a secret."""
    config = BUNDLE["server"]["mcp_config"]
    settings = {f"QOLABA_{name.upper()}" for name in Settings.model_fields}
    assert set(config["env"]) <= settings
    used = " ".join([*config["env"].values(), *config["args"]])
    assert set(re.findall(r"\$\{user_config\.(\w+)\}", used)) == set(BUNDLE["user_config"])
    assert config["env"]["QOLABA_API_KEY"] == "${user_config.api_key}"
    assert BUNDLE["user_config"]["api_key"]["sensitive"] is True
    assert BUNDLE["user_config"]["output_dir"]["type"] == "directory"
