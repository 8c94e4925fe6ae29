-- The tracker looked at a followed child and it has not ended (`RecordStore.restage`):
-- its stage (`scheduled` or `running`) and the next forced check. Nothing for a request
-- already done (another tracker finished it), beyond leaving the follow set.
-- KEYS: record, follow set, outcome so far (its TTL renewed with the record's). ARGV: ttl, request ID, stage, next check (Unix time).
local record = KEYS[1]
local state = redis.call('HGET', record, 'state')
if state == 'done' or not state then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 0
end
if ARGV[3] == 'running' then
  redis.call('HSET', record, 'state', 'running')
else
  redis.call('HSET', record, 'state', 'scheduled')
end
redis.call('EXPIRE', record, ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', ARGV[4], ARGV[2])
return 1
