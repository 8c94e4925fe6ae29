"""nomadsim: a Nomad-HTTP-API-compatible development server (like `nomad agent -dev`).

It shares no code with the dispatchq client, so it can catch the client's mistakes.
"""
