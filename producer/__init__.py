"""The callers' side: enqueue, batches, await/poll by ID, and the `dispatchq` CLI."""
