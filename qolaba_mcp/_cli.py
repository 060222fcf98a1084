"""The ``qolaba-mcp`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    import anyio

    from ._config import Settings
    from .ops import Ops


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
    serve = parser.add_argument_group("serving (the default command)")
    serve.add_argument(
        "--transport",
        choices=["stdio", "http"],
        default="stdio",
        help="stdio (default; what desktop hosts launch) or Streamable HTTP at /mcp",
    )
    serve.add_argument("--host", default="127.0.0.1", help="HTTP: address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP: port to listen on (default: 8000)")
    serve.add_argument(
        "--stateless",
        action="store_true",
        help="HTTP: no sessions; every request stands alone, so replicas can share a load balancer",
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="HTTP: allow a non-loopback bind without QOLABA_MCP_AUTH_TOKEN (only behind your own auth)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST[:PORT|:*]",
        help="HTTP: accept this Host header too (repeatable; adds to QOLABA_MCP_ALLOWED_HOSTS)",
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="HTTP: accept this Origin header too (repeatable; adds to QOLABA_MCP_ALLOWED_ORIGINS)",
    )
    serve.add_argument(
        "--allow-client-keys",
        action="store_true",
        help="HTTP: use a caller's own Qolaba key from the X-Qolaba-Api-Key header for that request",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at /metrics on this port (QOLABA_MCP_METRICS_HOST, default 127.0.0.1)",
    )
    serve.add_argument("--api-base-url", default=None, help="Qolaba API base URL (overrides QOLABA_API_BASE_URL)")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="start a local sandbox in-process and use it: try everything with no key and no network",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    sandbox = commands.add_parser(
        "sandbox",
        help="run a local Qolaba-compatible API (no key, no network)",
        description="Serve a local Qolaba-compatible image API with real PNGs and fault injection.",
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    sandbox.add_argument("--port", type=int, default=8765, help="port to listen on (default: 8765)")
    sandbox.add_argument("--latency", type=float, default=2.0, help="seconds each generation takes (default: 2)")
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
        choices=["output-object", "output-list", "output-urls", "top-level", "backend", "mixed"],
        help="where finished tasks put their images in the poll body (default: output-object)",
    )
    sandbox.add_argument("--random-seed", type=int, default=None, help="seed the fault dice")
    sandbox.add_argument(
        "--nsfw",
        default="none",
        choices=["none", "some", "all"],
        help="images the safety filter flags: none, the first (some), or all, which removes them (default: none)",
    )
    sandbox.add_argument(
        "--failed-status",
        type=int,
        default=200,
        choices=[200, 500],
        help="HTTP status of a poll that finds its task FAILED (default: 200)",
    )
    sandbox.add_argument(
        "--result-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="forget finished tasks after this long: their polls and images then answer 404 (default: never)",
    )
    sandbox.add_argument(
        "--pictures",
        choices=["captioned", "plain"],
        default="captioned",
        help="captioned (default): images show prompt, model, seed and size; plain: a cheap gradient for "
        "generations without input images, for fast test suites (edits are always drawn)",
    )

    demo = commands.add_parser(
        "demo",
        help="show the server at work over stdio: list_models, generate_image, then an edit; PNGs under ./out",
        description="Start a sandbox on a free port, launch qolaba-mcp over stdio with a real MCP client, "
        "call list_models and generate_image with a live progress bar, save the PNGs under ./out, then remove the "
        "background of the first one, naming it by its qolaba://images URI.",
    )
    demo.add_argument(
        "--live",
        action="store_true",
        help="use the real Qolaba API (needs QOLABA_API_KEY) instead of a sandbox",
    )
    demo.add_argument("--out", default="out", help="folder for the PNGs (default: ./out)")

    history = commands.add_parser(
        "history",
        help="print recent generations from the ledger, and where their files are",
        description="Print the newest generations in the ledger (QOLABA_LEDGER_URL), newest first, with the "
        "files saved for each.",
    )
    history.add_argument("--search", default=None, metavar="TEXT", help="only generations whose prompt matches")
    history.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default: 20, at most 200)")
    spend = commands.add_parser(
        "spend",
        help="print what the ledger's generations cost in the last 24 hours and 30 days, by model",
        description="Print the spend recorded in the ledger (QOLABA_LEDGER_URL) over the last 24 hours and 30 "
        "days, by model (costs the API reported, and money held for generations still running or of unknown "
        "outcome), with the limits set by QOLABA_DAILY_BUDGET_USD, QOLABA_MAX_COST_PER_CALL_USD and "
        "QOLABA_CONFIRM_ABOVE_USD.",
    )
    spend.add_argument("--json", action="store_true", help="print the report as JSON")
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
            nsfw=args.nsfw,
            failed_status=args.failed_status,
            result_ttl=args.result_ttl,
            pictures=args.pictures,
        )
        print(f"Qolaba sandbox on http://{args.host}:{args.port} (any API key works)", file=sys.stderr)
        serve(config, host=args.host, port=args.port)
        return 0
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(live=args.live, out=args.out)
    if args.command == "history":
        return _history(search=args.search, limit=args.limit)
    if args.command == "spend":
        return _spend(as_json=args.json)
    return _serve(args)


def _spend(*, as_json: bool) -> int:
    from ._reports import spend_text

    return _print_report(lambda settings: spend_text(settings, as_json))


def _history(*, search: str | None, limit: int) -> int:
    from ._reports import history_table

    return _print_report(lambda settings: history_table(settings, search, max(1, min(limit, 200))))


def _print_report(report: Callable[[Settings], Awaitable[str]]) -> int:
    """Print a report from the ledger; a ledger that cannot be read fails as the server does: one line, exit 2."""
    import anyio

    from ._config import Settings, SettingsError
    from .ledger import LedgerError

    try:
        settings = Settings.from_env()
        print(anyio.run(report, settings))
    except (SettingsError, ValueError) as exc:
        print(f"qolaba-mcp: {exc}", file=sys.stderr)
        return 2
    except LedgerError as exc:
        print(f"qolaba-mcp: {_ledger_problem(exc)}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    import anyio

    from ._config import Settings, SettingsError
    from .server._server import build_server

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"qolaba-mcp: {exc}", file=sys.stderr)
        return 2
    # Flags win over the environment, and are validated as it is.
    updates: dict[str, Any] = {
        "mcp_allowed_hosts": [*settings.mcp_allowed_hosts, *args.allowed_host],
        "mcp_allowed_origins": [*settings.mcp_allowed_origins, *args.allowed_origin],
        "mcp_allow_client_keys": settings.mcp_allow_client_keys or args.allow_client_keys,
    }
    if args.api_base_url:
        updates["api_base_url"] = args.api_base_url
    sandbox = None
    if args.sandbox:
        from pydantic import SecretStr

        from .sandbox import SandboxServer

        sandbox = SandboxServer().start()
        updates.update(api_base_url=sandbox.base_url, api_key=SecretStr("sandbox"))
        if settings.ledger_url is None:  # a throwaway API gets a throwaway ledger: the user's history stays theirs
            updates["ledger_url"] = "sqlite:///:memory:"
        logging.getLogger("qolaba_mcp").warning("using an in-process sandbox at %s", sandbox.base_url)
    try:
        settings = Settings.from_env(**updates)
    except SettingsError as exc:
        if sandbox is not None:
            sandbox.stop()
        print(f"qolaba-mcp: {exc}", file=sys.stderr)
        return 2
    # Set as the HTTP server starts to stop, so that calls still waiting return their task_id at once.
    stopping = anyio.Event()
    ops, stop_tracing = _start_ops(settings, args)
    try:
        if args.transport == "http":
            server = build_server(settings, transport="http", stopping=stopping, ops=ops, stateless=args.stateless)
            from ._http import InsecureBindError, serve_http

            try:
                serve_http(
                    server,
                    settings,
                    host=args.host,
                    port=args.port,
                    stateless=args.stateless,
                    insecure_no_auth=args.insecure_no_auth,
                    log_level=args.log_level,
                    on_shutdown=stopping.set,
                    ops=ops,
                )
            except InsecureBindError as exc:
                print(f"qolaba-mcp: {exc}", file=sys.stderr)
                return 2
        else:
            _run_stdio(settings, stopping, ops)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # the ledger failing to open arrives wrapped in the server's task groups
        if args.transport == "stdio" and _client_left(exc):
            # The SDK's stdio writer fails on the closed pipe and takes the session down: nobody is left to answer,
            # and a call under way has its ledger row (written before every step, even while cancelled).
            logging.getLogger("qolaba_mcp").warning(
                "the MCP client closed the connection (%s); exiting. A generation it left under way stays in the "
                "ledger: get_task or list_generations answers it",
                _leaf(exc),
            )
            return 0
        problem = _ledger_problem(exc)
        if problem is None:
            raise
        print(f"qolaba-mcp: {problem}", file=sys.stderr)
        return 2
    finally:
        if stop_tracing is not None:
            stop_tracing()  # the spans still batched go out before the process ends
        if sandbox is not None:
            sandbox.stop()
    return 0


def _start_ops(settings: Settings, args: argparse.Namespace) -> tuple[Ops, Callable[[], None] | None]:
    """Metrics (with --metrics-port) and traces (as the OTEL_* variables say); each imported only when on."""
    from .ops import start_ops, start_tracing

    stop_tracing = start_tracing(__version__)
    ops = start_ops(
        metrics_host=settings.mcp_metrics_host,
        metrics_port=args.metrics_port,
        tracing=stop_tracing is not None,
        trace_prompts=settings.trace_prompts,
    )
    return ops, stop_tracing


# After SIGTERM, how long a stdio server may take to write its ledger records before it exits anyway.
STDIO_SHUTDOWN_S = 35.0


def _run_stdio(settings: Settings, stopping: anyio.Event, ops: Ops) -> None:
    """Serve over stdio until the client leaves or SIGTERM comes; on SIGTERM, leave through the lifespan (ledger
    records still behind are written) and exit once it has ended.

    The SDK reads stdin in a worker thread that no cancellation can interrupt, so the process cannot wait for it:
    once the lifespan has ended (or after STDIO_SHUTDOWN_S), it exits at once."""
    import anyio

    from .server._server import build_server

    closed = threading.Event()
    server = build_server(settings, transport="stdio", stopping=stopping, closed=closed, ops=ops)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            if hasattr(signal, "SIGTERM") and sys.platform != "win32":

                async def on_sigterm() -> None:
                    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                        async for _ in signals:
                            logging.getLogger("qolaba_mcp").warning(
                                "SIGTERM: writing the ledger's last records, then exiting"
                            )
                            threading.Thread(target=_exit_once, args=(closed,), daemon=True).start()
                            stopping.set()
                            group.cancel_scope.cancel()
                            return

                group.start_soon(on_sigterm)
            await server.run_stdio_async()
            group.cancel_scope.cancel()

    anyio.run(main)


def _exit_once(closed: threading.Event) -> None:
    closed.wait(STDIO_SHUTDOWN_S)
    logging.shutdown()
    os._exit(0)


def _client_left(exc: BaseException) -> bool:
    """Whether ``exc`` is only the stdio pipe to the client breaking (every leaf of its groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_left(inner) for inner in exc.exceptions)
    return isinstance(exc, BrokenPipeError | ConnectionResetError)


def _leaf(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return type(exc).__name__


def _ledger_problem(exc: BaseException) -> str | None:
    """The message of a LedgerError at the root of ``exc`` (start-up cannot go on without the ledger), if any."""
    from .ledger import LedgerError

    if isinstance(exc, LedgerError):
        return f"{exc} (QOLABA_LEDGER_URL; set it to off to run without a ledger)"
    if isinstance(exc, BaseExceptionGroup):
        return next((found for inner in exc.exceptions if (found := _ledger_problem(inner))), None)
    return None
