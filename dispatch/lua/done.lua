-- A request finished (`RecordStore.mark_done`). Counts it in its batch once, however
-- often it is finished (a redelivery after the outcome was stored runs the task again),
-- and stores its outcome (KEYS[2], `store_result`) in the same step: the first finish
-- wins, so a late duplicate cannot replace an outcome already stored.
-- A refused message (dead-lettered, not run) that names a request passes its digest: if
-- the record keeps another one, the message is not that request, and nothing is written
-- (returns -1).
-- A followed child's end (the tracker, `RecordStore.finish_followed`) also leaves the
-- follow set (KEYS[3]) here, and its outcome so far (KEYS[4]) and deadline are dropped.
-- Returns 1 when this call finished the request, 0 when it was done already.
-- KEYS: record, [result, [follow set, outcome so far]]. ARGV: ttl, exit code, batch key
-- or '', error entry or '', batch error list, its cap, digest or '', [result value,
-- result ttl, [request ID]].
local record = KEYS[1]
local found = redis.call('HMGET', record, 'state', 'digest')
local state = found[1]
if ARGV[7] ~= '' and found[2] and found[2] ~= ARGV[7] then return -1 end
if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[10]) end
redis.call('EXPIRE', record, ARGV[1])
if state == 'done' then return 0 end
redis.call('HSET', record, 'state', 'done', 'exit_code', ARGV[2])
if KEYS[3] then redis.call('HDEL', record, 'deadline') end
if KEYS[4] then redis.call('DEL', KEYS[4]) end
if ARGV[3] ~= '' then
  redis.call('HINCRBY', ARGV[3], 'done', 1)
  redis.call('EXPIRE', ARGV[3], ARGV[1])
  redis.call('HINCRBY', ARGV[3], 'exit:' .. ARGV[2], 1)
  local child = redis.call('HGET', record, 'dispatched_job_id')
  if child and child ~= '' then redis.call('HINCRBY', ARGV[3], 'done_dispatched', 1) end
  if ARGV[4] ~= '' and redis.call('LLEN', ARGV[5]) < tonumber(ARGV[6]) then
    redis.call('RPUSH', ARGV[5], ARGV[4])
    redis.call('EXPIRE', ARGV[5], ARGV[1])
  end
end
if KEYS[2] then store_result(KEYS[2], ARGV[8], ARGV[9]) end
return 1
