-- A worker taking a request (`RecordStore.begin`): the child and evaluation it names (a
-- redelivered request that was dispatched), whether its batch was cancelled, and (unless
-- the request is already dispatched, or cancelled) the record marked dispatching; and the
-- value of KEYS[2], if given (the payload blob the request will need). One round trip
-- where four separate reads and writes cost a third of a request's time.
-- KEYS: record, [blob]. ARGV: ttl, job ID, batch ID or '', now, batch key or ''.
local record = KEYS[1]
local ids = redis.call('HMGET', record, 'dispatched_job_id', 'eval_id')
local cancelled = 0
if ARGV[3] ~= '' and redis.call('HGET', ARGV[5], 'state') == 'cancelled' then cancelled = 1 end
local child = ids[1]
if (not child or child == '') and cancelled == 0 then
  redis.call('HSET', record, 'state', 'dispatching', 'job_id', ARGV[2], 'started_at', ARGV[4])
  if ARGV[3] ~= '' then redis.call('HSET', record, 'batch_id', ARGV[3]) end
  redis.call('EXPIRE', record, ARGV[1])
end
local value = false
if KEYS[2] then value = redis.call('GET', KEYS[2]) end
return {child, ids[2], cancelled, value}
