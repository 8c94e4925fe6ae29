"""Local stacks for development, the demo and the tests: real processes on 127.0.0.1.

Nothing here is used by the client at run time; a real deployment points at its own Redis
and Nomad. It starts the daemons and nomadsim by command, importing none of them, and
never imports the callers' library or the CLI (whose `dev` and `demo` commands use it).
"""
