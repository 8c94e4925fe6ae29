"""Following dispatched children to their end (`until` finished), without Celery.

`decide` says from a child job and its allocations (Nomad's JSON) whether the child has
ended and how: pure, tested hard. `follower` is the loop a `dispatchq tracker` process
runs: a leader lease, one event stream that only marks children dirty, reads as the truth,
and one script that stores each outcome (first finish wins).
"""
