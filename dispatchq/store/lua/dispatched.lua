-- The write-ahead record (`RecordStore.mark_dispatched`): the child and evaluation, at
-- once, and the request moved to its batch's `monitoring` count.
-- No TTL is renewed here: the take (begin.lua) renewed the record's a moment before, and
-- the batch's is renewed by each ending (done.lua).
-- KEYS: record. ARGV: ttl, dispatched job ID, eval ID, batch key or ''.
local record = KEYS[1]
local state = redis.call('HGET', record, 'state')
redis.call('HSET', record, 'state', 'monitoring', 'dispatched_job_id', ARGV[2], 'eval_id', ARGV[3])
batch_move(ARGV[4], state, 'monitoring')
