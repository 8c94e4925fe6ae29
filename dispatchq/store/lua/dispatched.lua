-- The write-ahead record (`RecordStore.mark_dispatched`): the child and evaluation, at
-- once; counted in the batch the first time only, and moved to its `monitoring` count.
-- No TTL is renewed here: the take (begin.lua) renewed the record's a moment before, and
-- the batch's is renewed by each ending (done.lua).
-- KEYS: record. ARGV: ttl, dispatched job ID, eval ID, batch key or ''.
local record = KEYS[1]
local found = redis.call('HMGET', record, 'dispatched_job_id', 'state')
local first = found[1]
redis.call('HSET', record, 'state', 'monitoring', 'dispatched_job_id', ARGV[2], 'eval_id', ARGV[3])
batch_move(ARGV[4], found[2], 'monitoring')
if (not first or first == '') and ARGV[4] ~= '' then
  redis.call('HINCRBY', ARGV[4], 'dispatched', 1)
end
