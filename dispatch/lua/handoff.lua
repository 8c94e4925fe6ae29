-- A request that follows its child (`until` finished) whose evaluation is done
-- (`RecordStore.hand_off`): the record goes to `scheduled` (unless the tracker already saw
-- it `running`) with what the outcome has so far, and joins the follow set, due at once.
-- A request already done is left alone (a redelivery after the tracker finished it).
-- The outcome so far is its own key (KEYS[3]), not a field: see `dispatch.records`.
-- KEYS: record, follow set, outcome so far. ARGV: ttl, request ID, due (Unix time), child's namespace,
-- deadline (Unix time) or '', the outcome so far (JSON).
local record = KEYS[1]
local state = redis.call('HGET', record, 'state')
if state == 'done' then return 0 end
if state ~= 'running' then redis.call('HSET', record, 'state', 'scheduled') end
redis.call('HSET', record, 'namespace', ARGV[4])
redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[1])
if ARGV[5] ~= '' then redis.call('HSET', record, 'deadline', ARGV[5]) end
redis.call('EXPIRE', record, ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[2])
return 1
