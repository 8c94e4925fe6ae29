"""The registry of dispatchq's Lua scripts: every script it runs is a file of `lua/`, read
once here, by name. A file whose name starts with '_' is a library of functions,
prepended to each script that calls one of them.
"""

from __future__ import annotations

from importlib.resources import files


def _load_scripts() -> dict[str, str]:
    """The scripts of `lua/`, by name; those calling `store_result` get its definition."""
    folder = files("dispatchq.store") / "lua"
    texts = {
        entry.name.removesuffix(".lua"): entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua")
    }
    libraries = {
        "store_result(": texts.pop("_store"),
        "emit_done_events(": texts.pop("_events"),
        "lane_args(": texts.pop("_lanes"),
        "batch_move(": texts.pop("_batch"),
        "clock(": texts.pop("_clock"),
        "current_rate(": texts.pop("_rate"),
    }
    return {
        name: "".join(lib for call, lib in libraries.items() if call in text) + text
        for name, text in texts.items()
    }


SCRIPTS = _load_scripts()
"""The text of every script of `lua/`, read once, by file name: the record's (`begin`,
`done`...), the fetch and lanes of `dispatchq.broker.fetch`, the batches', the
backpressure gate's (`rate_*`, `children_*`). Every script dispatchq runs is one of these."""
