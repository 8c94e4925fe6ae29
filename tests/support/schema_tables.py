"""The README's tables of the outcome format, made from `dispatch/outcome.schema.json`."""

from __future__ import annotations

from typing import Any


def _type(prop: dict[str, Any]) -> str:
    if "const" in prop:
        return f"`{prop['const']}`"
    if "enum" in prop:
        return " \\| ".join(f"`{value}`" for value in prop["enum"])
    if "$ref" in prop:
        return "string"
    kind = prop.get("type", "")
    return " \\| ".join(kind) if isinstance(kind, list) else kind


def schema_tables(schema: dict[str, Any]) -> dict[str, str]:
    """Markdown tables by name: `outcome` (its fields) and `error-kinds`."""
    outcome = schema["$defs"]["outcome"]
    required = set(outcome["required"])
    rows = ["| field | type | always | meaning |", "|---|---|---|---|"]
    for name, prop in outcome["properties"].items():
        meaning = prop.get("description") or schema["$defs"]["error_kind"]["description"]
        always = "yes" if name in required else ""
        rows.append(f"| `{name}` | {_type(prop)} | {always} | {meaning} |")
    kinds = ["| error_kind | meaning |", "|---|---|"]
    for item in schema["$defs"]["error_kind"]["oneOf"]:
        kinds.append(f"| `{item['const']}` | {item['description']} |")
    return {"outcome": "\n".join(rows), "error-kinds": "\n".join(kinds)}
