"""The broker glue: Celery's app and the result backend (`app`), the reliable fetch and fair
queueing (`fetch`), poison messages (`poison`), dead-letter writes (`deadletter`), the
redelivery of a lost worker's messages (`redelivery`) and the wire format of a queue
message (`messages`). Everything that knows Celery or kombu beyond its public API is here,
each override held by an upstream contract test (tests/test_upstream_contracts.py)."""
