"""Everything dispatchq keeps in Redis, and the only code that knows its key names and
scripts: keys and TTLs (`keys`), request records and the Lua registry (`records`), batches,
lanes, dead letters, liveness, completion events and batch retries. Every script is a
`.lua` file in `lua/`."""
