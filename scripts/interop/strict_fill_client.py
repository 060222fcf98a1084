"""What a strict-mode model sends: EVERY property of generate_image present, the ones it does not use as null.

For each model that list_models returns: the arguments are `model`, `prompt` (where the model takes one), the
inputs the model requires (image_urls/mask_url/reference_images pointing at an image generated first), every other
property of the tool's input schema null, and `wait_seconds: 0` (submit only). Those arguments must validate against
the tool's input schema (JSON Schema 2020-12), and the server must accept them (no error result). Runs through the
OpenAI Agents SDK's MCPServerStdio (its strict-mode models are the ones that send such calls).
"""

from __future__ import annotations

from typing import Any

from _common import GENERATE_ARGS, Report, one_line, run, server_command, server_env, versions
from agents.mcp import MCPServerStdio
from jsonschema import Draft202012Validator

PROMPT = "A red fox in fresh snow, strict-mode interop check"


def field(obj: Any, snake: str, camel: str) -> Any:
    return getattr(obj, snake) if hasattr(obj, snake) else getattr(obj, camel, None)


def text_of(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content if getattr(c, "type", None) == "text")


def fill_every_field(
    properties: dict[str, Any], model: dict[str, Any], image_url: str
) -> tuple[dict[str, Any], list[str]]:
    """The arguments, and the required inputs this script cannot fill (an unknown parameter name)."""
    args: dict[str, Any] = dict.fromkeys(properties)
    args["model"] = model["id"]
    args["wait_seconds"] = 0
    if "prompt" in (model.get("parameters") or ["prompt"]):
        args["prompt"] = PROMPT
    samples = {
        "prompt": PROMPT,
        "image_urls": [image_url],
        "mask_url": image_url,
        "reference_images": [{"url": image_url}],
    }
    unknown = []
    for name in model.get("required") or []:
        if name in samples:
            args[name] = samples[name]
        else:
            unknown.append(name)
    return args, unknown


async def main(report: Report) -> str:
    print(versions("openai-agents", "mcp", "jsonschema"))
    command, args = server_command()
    server = MCPServerStdio(
        params={"command": command, "args": args, "env": server_env()},
        client_session_timeout_seconds=60,
        name="qolaba",
    )
    accepted = 0
    async with server:
        tools = await report.step("list_tools", server.list_tools)
        generate = next((t for t in tools or [] if t.name == "generate_image"), None)
        if generate is None:
            report.fail("tools/list has no generate_image")
            return ""
        schema = field(generate, "input_schema", "inputSchema")
        properties = schema.get("properties") or {}
        validator = Draft202012Validator(schema)

        listed = await report.step("call_tool list_models", lambda: server.call_tool("list_models", {}))
        models = report.check_models(field(listed, "structured_content", "structuredContent")) if listed else []
        # An image the image-input models can take (image_urls, mask_url, reference_images).
        made = await report.step("call_tool generate_image", lambda: server.call_tool("generate_image", GENERATE_ARGS))
        made_sc = field(made, "structured_content", "structuredContent") if made else None
        images = (made_sc or {}).get("images") or []
        if not images:
            report.fail(f"generate_image made no image to use as an input ({one_line(made_sc, 200)})")
            return ""
        image_url = images[0]["url"]

        # Per model on the log; one line for the summary, joining what the schema and the server refused.
        schema_nulls: set[str] = set()
        schema_models: list[str] = []
        refused: list[tuple[str, str]] = []
        for model in models:
            model_id = str(model.get("id"))
            fill, unknown = fill_every_field(properties, model, image_url)
            if unknown:
                report.fail(f"{model_id}: list_models requires {', '.join(unknown)}, which this check cannot fill")
                continue
            errors = list(validator.iter_errors(fill))
            if errors:
                rejected = sorted({".".join(map(str, e.absolute_path)) or "<root>" for e in errors})
                schema_nulls.update(rejected)
                schema_models.append(model_id)
                first = one_line(errors[0].message, 120)
                print(f"  ---- {model_id}: input schema rejects {', '.join(rejected)} ({first})")
            else:
                report.ok(f"{model_id}: fill-every-field arguments validate against the input schema")
            result = await report.step(
                f"{model_id}: call_tool generate_image (fill every field)",
                lambda fill=fill: server.call_tool("generate_image", fill),
            )
            if result is None:
                continue
            if field(result, "is_error", "isError"):
                refused.append((model_id, text_of(result)))
                print(f"  ---- {model_id}: server refused: {one_line(text_of(result), 300)}")
            else:
                status = (field(result, "structured_content", "structuredContent") or {}).get("status")
                report.ok(f"{model_id}: server accepted the fill-every-field call ({status})")
                accepted += 1
        problems = []
        if schema_models:
            problems.append(
                f"generate_image's input schema rejects null for {', '.join(sorted(schema_nulls))} "
                f"({len(schema_models)}/{len(models)} models)"
            )
        if refused:
            first_id, first_text = refused[0]
            problems.append(
                f"server refused {len(refused)}/{len(models)} fill-every-field calls "
                f"(first, {first_id}: {one_line(first_text, 200)})"
            )
        if problems:
            report.fail("; ".join(problems))
    return f"{accepted} model(s) accept fill-every-field calls"


if __name__ == "__main__":
    run("strict-fill", main)
