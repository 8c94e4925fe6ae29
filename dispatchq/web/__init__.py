"""The dashboard (`dispatchq web`, the `[web]` extra): batches, requests, the queue, the
fleet and dead letters in a browser, live. See `dispatchq.web.app`."""
