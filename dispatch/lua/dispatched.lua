-- The write-ahead record (`RecordStore.mark_dispatched`): the child and evaluation, at
-- once; counted in the batch the first time only.
-- KEYS: record. ARGV: ttl, dispatched job ID, eval ID, batch key or ''.
local record = KEYS[1]
local first = redis.call('HGET', record, 'dispatched_job_id')
redis.call('HSET', record, 'state', 'monitoring', 'dispatched_job_id', ARGV[2], 'eval_id', ARGV[3])
redis.call('EXPIRE', record, ARGV[1])
if (not first or first == '') and ARGV[4] ~= '' then
  redis.call('HINCRBY', ARGV[4], 'dispatched', 1)
  redis.call('EXPIRE', ARGV[4], ARGV[1])
end
