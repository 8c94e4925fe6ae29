"""The callers' library: enqueue requests and batches, await or poll outcomes by ID, follow
completion events (`api.Producer`; the module-level `dispatchq.enqueue`, `wait` and `result`
use a default one). What a service that only produces needs: no worker, no daemon."""
