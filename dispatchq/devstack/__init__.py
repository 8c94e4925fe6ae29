"""Local stacks for development, the demo and the tests: real processes on 127.0.0.1.

Nothing here is used by the client at run time; a real deployment points at its own Redis
and Nomad. In the import structure devstack sits on dispatch (it starts worker processes by
command, importing no worker code) and below producer, whose CLI (`dispatchq dev`, `demo`)
uses it: it never imports producer (the demo's fan-out is `dispatchq.devstack.demo`).
"""
