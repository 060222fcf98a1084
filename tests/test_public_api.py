"""The public surface: __all__ is sorted, complete and every name resolves; importing the package stays light."""

from __future__ import annotations

import subprocess
import sys

import qolaba_mcp


def test_all_is_sorted_and_resolves() -> None:
    assert qolaba_mcp.__all__ == sorted(qolaba_mcp.__all__)
    for name in qolaba_mcp.__all__:
        assert getattr(qolaba_mcp, name) is not None, name
    assert issubclass(qolaba_mcp.RateLimitError, qolaba_mcp.QolabaError)


def test_importing_the_package_or_the_pytest_plugin_loads_nothing_heavy() -> None:
    heavy = ("mcp", "httpx2", "starlette", "uvicorn", "qolaba_mcp.")
    light = ("qolaba_mcp.sandbox", "qolaba_mcp.sandbox.pytest_plugin")
    modules = ", ".join(("qolaba_mcp", *light))
    probe = (
        f"import sys, {modules}; "
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r}) and m not in {light!r}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
