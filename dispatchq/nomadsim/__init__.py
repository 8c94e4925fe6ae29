"""nomadsim: a Nomad-HTTP-API-compatible development server (like `nomad agent -dev`).

It shares no code with the dispatchq client, so it can catch the client's mistakes.
See README.md beside this file for the flags, the `/_sim/` admin API and the limits.

HTTP stack: its own HTTP/1.1 layer (`httpserver.py`, an asyncio protocol around
httptools' parser) on uvloop. A trivial handler costs about 45 us of server CPU per
request there against about 90 us under aiohttp's low-level `web.Server`, which it
replaced once aiohttp's per-request machinery was the largest share of a dispatch
(see README.md, "Implementation choices").
"""
