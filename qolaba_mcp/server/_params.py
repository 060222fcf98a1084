"""Tool parameters declared once, and how a tool is made from a function (strict arguments, portable schemas)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, cast, get_args

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from mcp.types import (
    ToolAnnotations,
)
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field
from pydantic.fields import FieldInfo

from .._config import Settings
from ..api._catalog import Capability
from ..api._wire import TASK_ID_MAX_LENGTH, TASK_ID_PATTERN, NotBool, is_safe_task_id
from ..ledger import LedgerState
from ._context import AppContext
from ._schemas import NULL_MEANS, portable_input, portable_output


def _task_id(value: str) -> str:
    if not is_safe_task_id(value):
        raise ValueError(
            "not a task_id: give it exactly as generate_image returned it (letters, digits, '_', '-', '.' or ':', "
            "not only dots)"
        )
    return value


TaskId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=TASK_ID_MAX_LENGTH,
        json_schema_extra={"pattern": TASK_ID_PATTERN},  # checked by _task_id, whose message is clearer
        description="The task_id that generate_image returned.",
        examples=["task_1705312200000_abc123"],
    ),
    AfterValidator(_task_id),
]


# Each parameter once: its type and limits here, its default in the tool's signature (a default inside Annotated is
# not allowed). A limit from the settings (the longest wait) is added where the tool is made: ``wait_limited``.
WaitSeconds = Annotated[
    float | None, Field(ge=0, description="Seconds to wait, with progress (then get_task continues)"), NotBool
]
Save = Annotated[
    bool | None, Field(description="Save the images on this machine and return their paths (default: on for stdio).")
]
Mode = Annotated[
    Literal["async", "sync"] | None,
    Field(description="async polls with progress; sync is one blocking request (fast models)."),
]
MaxCost = Annotated[
    float | None,
    Field(
        ge=0,
        allow_inf_nan=False,
        description="Most USD this call may cost (refused above). Where the user cannot be asked to confirm, only "
        "a price the user agreed to",
    ),
    NotBool,
]
ImageIndex = Annotated[int, Field(ge=0, le=15, description="Which image, from 0"), NotBool]
CapabilityFilter = Annotated[Capability | None, Field(description="List only the models with this capability")]
ModelSpend = Annotated[str | None, Field(max_length=200, description="Only this model id's spend")]
Search = Annotated[str | None, Field(max_length=200, description="Words to find in prompts and model ids")]
ModelFilter = Annotated[str | None, Field(max_length=200, description="Only this model id")]


def status_filter(value: object) -> object:
    """A status filter in the words results use (SUCCESS, FAILED, UNKNOWN) as the ledger's; an unfinished
    generation is in one of three ledger states, so it is filtered by those."""
    return _LEDGER_STATE.get(value, value) if isinstance(value, str) else value


_LEDGER_STATE = {
    "SUCCESS": "succeeded",
    "FAILED": "failed",
    "UNKNOWN": "unknown",
}


# The filter's schema lists the ledger's words; the words results use are taken too (see ``status_filter``).
StatusFilter = Annotated[
    LedgerState | None,
    BeforeValidator(status_filter),
    Field(description="Only generations in this state"),
]
Since = Annotated[datetime | None, Field(description="Only those asked for at or after this time (ISO 8601)")]
Until = Annotated[datetime | None, Field(description="Only those asked for before this time (ISO 8601)")]
Limit = Annotated[int | None, Field(ge=1, le=50, description="How many, newest first; default 10"), NotBool]
Cursor = Annotated[str | None, Field(max_length=200, description="next_cursor of the previous page")]


def wait_limited(settings: Settings, default: float) -> tuple[Any, float]:
    """The wait_seconds parameter of a tool (its type, its default) under this server's longest wait."""
    kind, *metadata = get_args(WaitSeconds)  # the limit goes before NotBool, so the schema still shows it
    limited = Annotated[kind, Field(le=settings.max_wait_seconds), *metadata]  # type: ignore[valid-type]
    return limited, min(default, settings.max_wait_seconds)


def limit_wait(tool: Callable[..., Any], settings: Settings, default: float) -> None:
    """Put this server's longest wait on ``tool``'s own ``wait_seconds`` parameter (limit and default)."""
    annotation, default = wait_limited(settings, default)
    signature = inspect.signature(tool, eval_str=True)
    params = [
        param.replace(annotation=annotation, default=default) if param.name == "wait_seconds" else param
        for param in signature.parameters.values()
    ]
    tool.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]


def keyword(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    """A keyword-only tool parameter: an ``Annotated`` type, or a pydantic model's field (its default kept)."""
    if isinstance(annotation, FieldInfo):
        default = inspect.Parameter.empty if annotation.is_required() else annotation.default
        annotation = Annotated[annotation.annotation, annotation]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def set_signature(
    tool: Callable[..., Any], params: list[inspect.Parameter], returns: Any, *, resolved: dict[str, Any] | None = None
) -> None:
    """Give ``tool(ctx, **arguments)`` the flat signature the SDK derives the input schema from.

    ``resolved`` are parameters the SDK fills by running a resolver (``Annotated[T, Resolve(fn)]``) rather than
    from the arguments; the SDK finds them in the annotations, so they go there too."""
    ctx = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context[AppContext])
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind)
        for name, kind in (resolved or {}).items()
    ]
    tool.__signature__ = inspect.Signature([ctx, *extra, *params], return_annotation=returns)  # type: ignore[attr-defined]
    tool.__annotations__.update(resolved or {})


def given(value: Any, default: Any) -> Any:
    """An optional argument's value: ``null`` means "not given" for every input (strict-mode callers send it)."""
    return default if value is None else value


# The properties of a generation result its output schema names (the rest are in every result, unlisted): what an
# agent acts on, within the tools/list budget.
RESULT_KEYS = frozenset(
    {"task_id", "status", "images", "error", "estimate_usd", "cost_usd", "next_step", "saved_files"}
)


def make_tool(
    fn: Callable[..., Any],
    *,
    title: str,
    description: str,
    read_only: bool,
    open_world: bool,
    output_keys: frozenset[str] | None = None,
) -> Tool:
    """A Tool named after its function; read-only tools are idempotent, and none of ours destroys anything."""
    annotations = ToolAnnotations(
        read_only_hint=read_only, destructive_hint=False, idempotent_hint=read_only, open_world_hint=open_world
    )
    tool = Tool.from_function(fn, title=title, description=description, annotations=annotations)
    optional = set(tool.parameters.get("properties", {})) - set(tool.parameters.get("required", []))
    if len(optional) > 1:  # said where it matters; a lone optional filter's type shows it takes null
        tool.description = f"{description} {NULL_MEANS}"
    return _strict(tool, output_keys)


def _strict(tool: Tool, output_keys: frozenset[str] | None = None) -> Tool:
    """Refuse unknown arguments: a misspelt field must be an error, not silently ignored on a paid call."""
    loose = tool.fn_metadata.arg_model
    strict = cast(
        "type[ArgModelBase]",
        type(loose.__name__, (loose,), {"model_config": ConfigDict(extra="forbid"), "__module__": __name__}),
    )
    tool.fn_metadata.arg_model = strict
    tool.parameters = portable_input(strict.model_json_schema(by_alias=True))
    if tool.fn_metadata.output_schema is not None:
        tool.fn_metadata.output_schema = portable_output(tool.fn_metadata.output_schema, output_keys)
    return tool
