"""deploy/: the systemd unit verifies, the example environment file names only known settings, and HAProxy accepts
the balancer config (make scale runs it for real)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qolaba_mcp._config import Settings

DEPLOY = Path(__file__).parent.parent / "deploy"
# The OpenTelemetry SDK's own variables (docs/operations.md#traces), read by it, not by Settings.
OTEL = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"}


def test_the_example_environment_holds_only_known_settings() -> None:
    pairs = dict(
        line.split("=", 1)
        for line in (DEPLOY / "qolaba-mcp.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    known = {f"QOLABA_{name.upper()}" for name in Settings.model_fields}
    assert set(pairs) - known <= OTEL, set(pairs) - known - OTEL
    Settings.from_env({k: v for k, v in pairs.items() if k.startswith("QOLABA_")})  # and every value is valid


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze here")
    binary = Path(sys.executable).parent / "qolaba-mcp"
    unit = (DEPLOY / "qolaba-mcp.service").read_text()
    unit = unit.replace("/usr/local/bin/qolaba-mcp", str(binary))
    unit = unit.replace("/etc/qolaba-mcp/qolaba-mcp.env", str(DEPLOY / "qolaba-mcp.env"))
    (tmp_path / "qolaba-mcp.service").write_text(unit)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "qolaba-mcp.service")], capture_output=True, text=True
    )
    problems = [line for line in done.stderr.splitlines() if "qolaba-mcp.service" in line]
    assert not problems, done.stderr
    for hardening in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert hardening in unit


def test_haproxy_accepts_the_balancer_config() -> None:
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if haproxy is None:
        pytest.skip("no haproxy here (make scale installs it)")
    env = {
        "LB_BIND": "127.0.0.1:1",
        "STATS_BIND": "127.0.0.1:2",
        **{f"REPLICA_{n}": f"127.0.0.1:{n + 10}" for n in (1, 2, 3)},
    }
    done = subprocess.run([haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
