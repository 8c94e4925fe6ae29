"""nomadsim: a Nomad-HTTP-API-compatible development server (like `nomad agent -dev`).

It shares no code with the dispatchq client, so it can catch the client's mistakes.
See README.md beside this file for the flags, the `/_sim/` admin API and the limits.

HTTP stack: aiohttp's low-level `web.Server` on asyncio. aiohttp is already a
dependency; measured with `bench/nomadsim_frameworks.py` (trivial handler, wrk -c32),
its low-level server was the fastest option (about 9,000 req/s here, against 7,500 for
aiohttp's router and 2,900-5,600 for Starlette on uvicorn without/with httptools and
uvloop), and it lets nomadsim route on the percent-decoded path itself, as Nomad does.
uvloop made no measurable difference, so it is not used.
"""
