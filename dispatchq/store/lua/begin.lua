-- A worker taking a request (`RecordStore.begin`): the child and evaluation it names (a
-- redelivered request that was dispatched), whether its batch was cancelled, and (unless
-- the request is already dispatched, or cancelled) the record marked dispatching; and the
-- value of KEYS[2], if given (the payload blob the request will need). One round trip
-- where four separate reads and writes cost a third of a request's time.
-- A message that is not the request its ID names is refused before anything is written:
-- its digest differs from the record's (1), or it claims a batch and no record was made
-- for it at enqueue time (2). The first message of a request with no record (a foreign
-- producer's) leaves its digest in the record it creates, for the next ones, unless its ID
-- is of the form only dispatchq makes, a batch item's attempt (`keys.is_reserved_id`),
-- whose record the retry made: without it, the message is refused (3).
-- A call takes a group of requests (`dispatchq.store.group`: those a worker takes at about
-- the same time), one after the other, with their batches' state read once per batch and
-- their counters written once (`count`, lua/_counters.lua).
-- KEYS, ARGV: the group's (`run_group`, lua/_group.lua). A take's KEYS: record, [blob].
-- ARGV: ttl, job ID, batch ID or '', now, batch key or '', digest, '1' for an attempt's ID
-- or ''.
-- Returns, per take, {child, eval ID, cancelled, blob value, refused, first taken (Unix time)}:
-- `started_at` is written by the first take only, so that `wait_timeout` counts from it.
local batch_states = {}

local function batch_state(batch)
  if batch_states[batch] == nil then batch_states[batch] = redis.call('HGET', batch, 'state') end
  return batch_states[batch]
end

local function take(KEYS, ARGV)
  local record = KEYS[1]
  local ids = redis.call('HMGET', record, 'dispatched_job_id', 'eval_id', 'digest', 'state',
                        'started_at')
  local digest = ids[3]
  if digest and digest ~= ARGV[6] then return {false, false, 0, false, 1, ARGV[4]} end
  if not ids[4] and ARGV[3] ~= '' then return {false, false, 0, false, 2, ARGV[4]} end
  if not ids[4] and ARGV[7] == '1' then return {false, false, 0, false, 3, ARGV[4]} end
  local cancelled = 0
  if ARGV[3] ~= '' and batch_state(ARGV[5]) == 'cancelled' then cancelled = 1 end
  local child = ids[1]
  if (not child or child == '') and cancelled == 0 then
    -- one HSET; a field already there (the first take's `started_at`, the digest) rewritten
    -- with its own value
    local started, own = ids[5] or ARGV[4], digest or ARGV[6]
    if ARGV[3] ~= '' then
      redis.call('HSET', record, 'state', 'dispatching', 'job_id', ARGV[2], 'started_at', started,
                 'digest', own, 'batch_id', ARGV[3])
      batch_move(ARGV[5], ids[4], 'dispatching', count)
    else
      redis.call('HSET', record, 'state', 'dispatching', 'job_id', ARGV[2], 'started_at', started,
                 'digest', own)
    end
    -- a record made here (a foreign producer's message) gets its TTL; one the producer made
    -- has one already, counting from its enqueue, and done.lua sets its last
    if not ids[4] then redis.call('EXPIRE', record, ARGV[1]) end
  end
  local value = false
  if KEYS[2] then value = redis.call('GET', KEYS[2]) end
  return {child, ids[2], cancelled, value, 0, ids[5] or ARGV[4]}
end

return run_group(take)
