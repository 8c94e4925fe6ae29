-- A request that follows its child (`until` finished) whose evaluation is done
-- (`RecordStore.hand_off`): the record goes to `scheduled` (unless the tracker already saw
-- it `running`) with what the outcome has so far, and joins the follow set, due at once.
-- A request already done is left alone (a redelivery after the tracker finished it).
-- The outcome so far is its own key (KEYS[3]), not a field: see `dispatchq.store.records`.
-- The request's own notify_url (ARGV[8]) is kept in the record, for the tracker's
-- `finish_followed`, which has no message to read it from. A request of a batch moves
-- between its batch's counters (`batch_move`, lua/_batch.lua; ARGV[7]: the batch key prefix).
-- KEYS: record, follow set, outcome so far. ARGV: ttl, request ID, due (Unix time), child's namespace,
-- deadline (Unix time) or '', the outcome so far (JSON), batch key prefix, notify_url or ''.
local record = KEYS[1]
local found = redis.call('HMGET', record, 'state', 'batch_id')
local state = found[1]
if state == 'done' then return 0 end
if state ~= 'running' then
  redis.call('HSET', record, 'state', 'scheduled')
  if found[2] and found[2] ~= '' and ARGV[7] then batch_move(ARGV[7] .. found[2], state, 'scheduled') end
end
redis.call('HSET', record, 'namespace', ARGV[4])
if ARGV[8] and ARGV[8] ~= '' then redis.call('HSET', record, 'notify_url', ARGV[8]) end
redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[1])
if ARGV[5] ~= '' then redis.call('HSET', record, 'deadline', ARGV[5]) end
redis.call('EXPIRE', record, ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[2])
return 1
