"""The registry of dispatchq's Lua scripts: every script it runs is a file of `lua/`, read
once here, by name. A file whose name starts with '_' is a library of functions,
prepended to each script that calls one of them.
"""

from __future__ import annotations

from importlib.resources import files


def _load_scripts() -> dict[str, str]:
    """The scripts of `lua/`, by name, each preceded by the libraries it calls (and those
    its libraries call), in the order below."""
    folder = files("dispatchq.store") / "lua"
    texts = {
        entry.name.removesuffix(".lua"): entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua")
    }
    calls = {  # library: the calls that need it; a library before those that call it
        "_counters": ("count(", "counter(", "count_and_read(", "flush_counters("),
        "_group": ("run_group(",),
        "_store": ("store_result(",),
        "_events": ("emit_done_events(",),
        "_lanes": ("lane_args(",),
        "_batch": ("batch_move(",),
        "_clock": ("clock(",),
        "_rate": ("current_rate(",),
    }
    libraries = {name: texts.pop(name) for name in calls}

    def needed(text: str) -> set[str]:
        found: set[str] = set()
        while more := {
            name for name, names in calls.items()
            if name not in found and any(call in text for call in names)
        }:  # fmt: skip
            found |= more
            text = "".join(libraries[name] for name in more)
        return found

    return {
        name: "".join(libraries[lib] for lib in calls if lib in needed(text)) + text
        for name, text in texts.items()
    }


SCRIPTS = _load_scripts()
"""The text of every script of `lua/`, read once, by file name: the record's (`begin`,
`done`...), the fetch and lanes of `dispatchq.broker.fetch`, the batches', the
backpressure gate's (`rate_*`, `children_*`). Every script dispatchq runs is one of these."""
