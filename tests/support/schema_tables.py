"""The tables of the outcome format in docs/formats.md, made from the schema
(`dispatchq/core/outcome.schema.json`)."""

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


def completion_tables(schema: dict[str, Any]) -> dict[str, str]:
    """Markdown tables of `dispatchq/store/completion.schema.json`: one per event type."""
    tables = {}
    for name in ("request_finished", "batch_finished"):
        event = schema["$defs"][name]
        rows = ["| field | type | meaning |", "|---|---|---|"]
        for field, prop in event["properties"].items():
            rows.append(f"| `{field}` | {_type(prop)} | {prop['description']} |")
        tables[name] = "\n".join(rows)
    return tables


if __name__ == "__main__":  # print the completion tables of docs/formats.md
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "dispatch" / "completion.schema.json"
    for table in completion_tables(json.loads(path.read_text(encoding="utf-8"))).values():
        print(table, end="\n\n")
