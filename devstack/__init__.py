"""Local stacks for development, the demo and the tests: real processes on 127.0.0.1.

Nothing here is used by the client at run time; a real deployment points at its own Redis
and Nomad.
"""
