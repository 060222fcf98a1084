"""The ``qolaba-mcp`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__


def _fault(spec: str) -> object:
    from .sandbox import Fault

    try:
        return Fault.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qolaba-mcp",
        description="MCP server for Qolaba image generation, and a local Qolaba-compatible sandbox.",
    )
    parser.add_argument("--version", action="version", version=f"qolaba-mcp {__version__}")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level for messages on stderr (default: WARNING)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    sandbox = commands.add_parser(
        "sandbox",
        help="run a local Qolaba-compatible API (no key, no network)",
        description="Serve a local Qolaba-compatible image API with real PNGs and fault injection.",
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    sandbox.add_argument("--port", type=int, default=8765, help="port to listen on (default: 8765)")
    sandbox.add_argument(
        "--latency", type=float, default=2.0, help="seconds each generation takes (default: 2)"
    )
    sandbox.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="KIND[@submit|@poll]=RATE",
        help="inject a fault into a fraction of requests; KIND is 429, 500, drop, malformed or "
        "failed (repeatable), e.g. --fault 429=0.1 --fault 500@poll=0.05",
    )
    sandbox.add_argument(
        "--retry-after", type=float, default=1.0, help="retryAfter seconds sent with a 429 (default: 1)"
    )
    sandbox.add_argument(
        "--poll-shape",
        default="output-object",
        choices=["output-object", "output-list", "output-urls", "top-level", "mixed"],
        help="where finished tasks put their images in the poll body (default: output-object)",
    )
    sandbox.add_argument("--random-seed", type=int, default=None, help="seed the fault dice")

    commands.add_parser(
        "demo",
        help="round trip against a local sandbox: generate, poll, save PNGs under ./out",
        description="Start a sandbox, generate an image asynchronously, and save the PNGs under ./out.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "sandbox":
        from .sandbox import SandboxConfig, serve

        config = SandboxConfig(
            latency=args.latency,
            faults=args.fault,
            retry_after=args.retry_after,
            poll_shape=args.poll_shape,
            random_seed=args.random_seed,
        )
        print(f"Qolaba sandbox on http://{args.host}:{args.port} (any API key works)", file=sys.stderr)
        serve(config, host=args.host, port=args.port)
        return 0
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    build_parser().print_help(sys.stderr)
    return 2
