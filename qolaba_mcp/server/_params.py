"""Tool parameters declared once, and how a tool is made from a function (strict arguments, portable schemas)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal, cast

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from mcp.types import (
    ToolAnnotations,
)
from pydantic import AfterValidator, ConfigDict, Field
from pydantic.fields import FieldInfo

from .._config import Settings
from ..api._wire import TASK_ID_MAX_LENGTH, TASK_ID_PATTERN, NotBool, is_safe_task_id
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


def keyword(name: str, field: FieldInfo | Any) -> inspect.Parameter:
    """A keyword-only tool parameter from a pydantic field (constraints, description and default kept)."""
    if not isinstance(field, FieldInfo):  # an Annotated[...] type alias
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=field)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Annotated[field.annotation, field],
        default=inspect.Parameter.empty if field.is_required() else field.default,
    )


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


def wait_seconds_field(settings: Settings, default: float) -> FieldInfo:
    return FieldInfo.from_annotated_attribute(
        Annotated[float | None, NotBool],  # type: ignore[arg-type]
        Field(
            default=min(default, settings.max_wait_seconds),
            ge=0,
            le=settings.max_wait_seconds,
            description="Seconds to wait, with progress (then get_task continues)",
        ),
    )


def given(value: Any, default: Any) -> Any:
    """An optional argument's value: ``null`` means "not given" for every input (strict-mode callers send it)."""
    return default if value is None else value


MODE = FieldInfo.from_annotated_attribute(
    Literal["async", "sync"] | None,  # type: ignore[arg-type]
    Field(
        default="async",
        description="async polls with progress; sync is one blocking request (fast models).",
    ),
)


SAVE = FieldInfo.from_annotated_attribute(
    bool | None,  # type: ignore[arg-type]
    Field(
        default=None,
        description="Save the images on this machine and return their paths (default: on for stdio).",
    ),
)


MAX_COST = FieldInfo.from_annotated_attribute(
    Annotated[float | None, NotBool],  # type: ignore[arg-type]
    Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Most USD this call may cost (refused above). Where the user cannot be asked to confirm, only "
        "a price the user agreed to",
    ),
)


STATES = Literal["submitting", "submitted", "running", "succeeded", "failed", "unknown"]


IMAGE_INDEX = Annotated[int, Field(ge=0, le=15, description="Which image, from 0"), NotBool]


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
