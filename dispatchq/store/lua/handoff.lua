-- Requests that follow their child (`until` finished) whose evaluation is done
-- (`RecordStore.hand_off`), a group of them (`dispatchq.store.group`: those a worker hands
-- off at about the same time): each record goes to `scheduled` (unless the tracker already
-- saw it `running`) with what the outcome has so far, and joins the follow set, due at once.
-- A request already done is left alone (a redelivery after the tracker finished it).
-- The outcome so far is its own key (KEYS[3]), not a field: see `dispatchq.store.records`.
-- The request's own notify_url (ARGV[8]) is kept in the record, for the tracker's
-- `finish_followed`, which has no message to read it from. A request of a batch moves
-- between its batch's counters (`batch_move`, lua/_batch.lua; ARGV[7]: the batch key
-- prefix), added up per group (`count`, lua/_counters.lua). One HSET per record (two or three
-- with a notify_url or a deadline), and no TTL renewed: whoever made the record gave it one,
-- and the tracker's first check (stage.lua) or the end (done.lua) renews it.
-- KEYS, ARGV: the group's (`run_group`, lua/_group.lua). A request's KEYS: record, follow
-- set, outcome so far. ARGV: ttl, request ID, due (Unix time), child's namespace, deadline
-- (Unix time) or '', the outcome so far (JSON), batch key prefix, notify_url or ''.
local function hand_off(KEYS, ARGV)
  local record = KEYS[1]
  local found = redis.call('HMGET', record, 'state', 'batch_id')
  local state = found[1]
  if state == 'done' then return 0 end
  local stage = 'scheduled'
  if state == 'running' then
    stage = state
  elseif found[2] and found[2] ~= '' then
    batch_move(ARGV[7] .. found[2], state, stage, count)
  end
  redis.call('HSET', record, 'state', stage, 'namespace', ARGV[4])
  if ARGV[8] ~= '' then redis.call('HSET', record, 'notify_url', ARGV[8]) end
  if ARGV[5] ~= '' then redis.call('HSET', record, 'deadline', ARGV[5]) end
  redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[1])
  redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[2])
  return 1
end

return run_group(hand_off)
