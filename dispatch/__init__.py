"""The domain: Nomad client, evaluation monitor, outcomes, payloads, Redis keys.

Imports neither Celery nor the CLI, so it can be used and tested on its own.
"""
