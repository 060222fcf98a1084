"""pytest fixture ``qolaba_sandbox``: a sandbox on an ephemeral loopback port, stopped after the test.

Installed with qolaba-mcp as a pytest plugin, so users' own test suites get it too. Configure it with
``@pytest.mark.qolaba_sandbox(latency=0, faults=[...])`` or by calling ``qolaba_sandbox.configure(...)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._server import SandboxServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "qolaba_sandbox(**config): SandboxConfig fields for the qolaba_sandbox fixture")


@pytest.fixture
def qolaba_sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxServer]:
    from ._config import SandboxConfig  # imported here: loading this plugin must stay free
    from ._server import SandboxServer

    marker = request.node.get_closest_marker("qolaba_sandbox")
    config = SandboxConfig.model_validate(marker.kwargs if marker else {})
    with SandboxServer(config) as server:
        yield server
