"""The MCP Bundle's entry point: qolaba-mcp over stdio, with --sandbox when the install form's Sandbox box is ticked.

The host puts the form's answers into the manifest's arguments as text, so the box arrives as --sandbox=true or
--sandbox=false (or unsubstituted when the host has no answer); qolaba-mcp itself takes a bare --sandbox.
"""

from __future__ import annotations

import sys

from qolaba_mcp._cli import main


def _arguments(given: list[str]) -> list[str]:
    wanted = []
    for argument in given:
        if argument.startswith("--sandbox="):
            if argument.partition("=")[2].strip().lower() == "true":
                wanted.append("--sandbox")
        else:
            wanted.append(argument)
    return wanted


if __name__ == "__main__":
    raise SystemExit(main(_arguments(sys.argv[1:])))
