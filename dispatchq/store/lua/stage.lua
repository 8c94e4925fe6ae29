-- The tracker looked at a followed child and it has not ended (`RecordStore.restage`):
-- its stage (`scheduled` or `running`) and the next forced check. Nothing for a request
-- already done (another tracker finished it), beyond leaving the follow set.
-- A request of a batch moves between its batch's counters (`batch_move`, lua/_batch.lua).
-- KEYS: record, follow set, outcome so far (its TTL renewed with the record's). ARGV: ttl,
-- request ID, stage, next check (Unix time), batch key prefix.
local record = KEYS[1]
local found = redis.call('HMGET', record, 'state', 'batch_id')
local state = found[1]
if state == 'done' or not state then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 0
end
local stage = 'scheduled'
if ARGV[3] == 'running' then stage = 'running' end
if stage == 'running' then
  redis.call('HSET', record, 'state', 'running')
else
  redis.call('HSET', record, 'state', 'scheduled')
end
if found[2] and found[2] ~= '' and ARGV[5] then batch_move(ARGV[5] .. found[2], state, stage) end
redis.call('EXPIRE', record, ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', ARGV[4], ARGV[2])
return 1
