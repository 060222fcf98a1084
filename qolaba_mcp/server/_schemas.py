"""Tool schemas in one portable form: what every converter we know of accepts unchanged, and small.

Hosts and agent frameworks do not read JSON Schema alike. Gemini's bridge crashes on a boolean
``additionalProperties`` and rejects ``$defs``/``$ref`` and ``examples``; OpenAI's strict mode makes every
property required, so an optional input must accept ``null`` ("not given"); a nullable enum must be an ``anyOf``
(a ``null`` inside ``enum`` breaks Gemini); converters drop range and length keywords, so the limits are repeated
in each description. Unknown argument names are still refused: the server's own argument model forbids them.
"""

from __future__ import annotations

from typing import Any

NULL_MEANS = "Optional inputs may be null (= not given)."
_DROPPED = frozenset({"title", "examples", "additionalProperties", "$defs", "default"})


def portable_input(schema: dict[str, Any]) -> dict[str, Any]:
    """An input schema with references inlined, optional fields nullable and limits spelt out.

    Every tool needs at least one input: strict converters (OpenAI's) refuse an object that declares no properties
    unless it says ``additionalProperties: false``, which other converters (google-genai's) cannot read."""
    return _node(schema, schema.get("$defs", {}))


def portable_output(schema: dict[str, Any], keep: frozenset[str] | None = None) -> dict[str, Any]:
    """An output schema one level deep: nested shapes are named in the tool's description, not spelt out.

    ``keep`` lists the properties worth their bytes in tools/list; the result may hold more (the schema does not
    forbid other properties), so leaving one out never makes a result invalid."""
    properties = {
        name: _output_property(sub)
        for name, sub in schema.get("properties", {}).items()
        if keep is None or name in keep
    }
    out: dict[str, Any] = {"type": "object", "properties": properties}
    required = [name for name in schema.get("required", []) if name in properties]
    if required:
        out["required"] = required
    return out


def _node(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        node = {**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}}
    variants = node.get("anyOf")
    if isinstance(variants, list) and {"type": "null"} in variants and len(variants) == 2:
        # pydantic's Optional[X]: described as X here; nullability is decided by "required" one level up.
        other = next(v for v in variants if v != {"type": "null"})
        node = {**{k: v for k, v in node.items() if k != "anyOf"}, **other}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or key == "properties":
            continue
        if key == "items" and isinstance(value, dict):
            out[key] = {k: v for k, v in _node(value, defs).items() if k != "description"}  # said by the property
        elif key == "maximum" and isinstance(value, int) and value >= 2**53:
            continue  # beyond what a JSON number holds exactly (a seed's 2**63 - 1): the server still checks it
        elif key == "maxLength" and isinstance(value, int) and value >= 1_000_000:
            continue  # a data: URI's room (megabytes) tells a model nothing and costs bytes: the server checks it
        else:
            out[key] = value
    if isinstance(node.get("properties"), dict):
        required = set(node.get("required", []))
        out["properties"] = {
            name: _described(_node(sub, defs), sub.get("default"), optional=name not in required)
            for name, sub in node["properties"].items()
        }
    return out


def _described(prop: dict[str, Any], default: Any, *, optional: bool) -> dict[str, Any]:
    """The property with its limits (and default) in words, and ``null`` accepted where it is optional.

    That null means "not given" is said once, in each tool's description (NULL_MEANS), not on every field.
    """
    words = [prop.pop("description", "").rstrip(".")]
    words += _limits(prop)
    if default is not None:
        words.append(f"default {str(default).lower() if isinstance(default, bool) else default}")
    text = "; ".join(word for word in words if word) + "."
    if not optional:
        return {**prop, "description": text}
    if "enum" in prop:
        return {"anyOf": [prop, {"type": "null"}], "description": text}
    kind = prop.get("type")
    return {**prop, "type": [kind, "null"] if isinstance(kind, str) else kind, "description": text}


def _limits(prop: dict[str, Any]) -> list[str]:
    """The range, length and size keywords as words: converters that drop the keywords keep these."""
    words = []
    low, high = prop.get("minimum"), prop.get("maximum")
    if low is not None and high is not None and high < 2**53:
        words.append(f"{_number(low)} to {_number(high)}")
    elif low is not None:
        words.append(f"at least {_number(low)}")
    elif high is not None:
        words.append(f"at most {_number(high)}")
    if prop.get("maxLength") is not None:
        words.append(f"at most {prop['maxLength']} characters")
    if prop.get("maxItems") is not None:
        words.append(f"at most {prop['maxItems']} items")
    return words


def _number(value: float) -> str:
    return f"{value:g}"


def _output_property(sub: dict[str, Any]) -> dict[str, Any]:
    variants = sub.get("anyOf")
    nullable = isinstance(variants, list) and {"type": "null"} in variants
    base = next((v for v in variants if v != {"type": "null"}), {}) if nullable and variants else sub
    if "$ref" in base or "properties" in base:
        kind: Any = "object"
    elif "enum" in base:
        kind = "string"
    else:
        kind = base.get("type", "object")
    out: dict[str, Any] = {"type": [kind, "null"] if nullable else kind}
    if kind == "array" and isinstance(base.get("items"), dict):
        out["items"] = _output_property(base["items"])
    if "enum" in base and not nullable:
        out["enum"] = base["enum"]
    return out
