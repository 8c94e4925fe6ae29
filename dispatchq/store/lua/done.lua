-- A request finished (`RecordStore.mark_done`). Counts it in its batch once, however
-- often it is finished (a redelivery after the outcome was stored runs the task again),
-- and stores its outcome (KEYS[2], `store_result`) in the same step: the first finish
-- wins, so a late duplicate cannot replace an outcome already stored.
-- A refused message (dead-lettered, not run) that names a request passes its digest: if
-- the record keeps another one, the message is not that request, and nothing is written
-- (returns -1).
-- With a stream (ARGV[12]), the ending appends its completion events in the same step
-- (`emit_done_events`, lua/_events.lua): the request's, and its batch's when it is the last.
-- A followed child's end (the tracker, `RecordStore.finish_followed`) also leaves the
-- follow set (KEYS[3]) here, and its outcome so far (KEYS[4]) and deadline (if it had one)
-- are dropped.
-- A request of a batch leaves its batch's state counters (`batch_move`, lua/_batch.lua).
-- Automatic retry (`--max-attempts`): an item of a batch whose `max_attempts` exceeds this
-- attempt (the record's `attempt`, 1 when absent) and that failed in its own run (exit
-- code 2) is not counted done in its batch: it is queued for its next attempt in the
-- retry set (ARGV[17], member "<batch ID>\31<item's first request ID>"), which
-- `dispatchq.store.retries` drains; its own outcome and event are stored as for any ending. Only
-- if the batch kept what re-running the item needs (ARGV[19], `keys.batch_items`) and its
-- next attempt's ID fits in 200 characters: else it ends as a failure now.
-- Its run time (ARGV[20], a `rt:<bucket>` field or '') is counted in its batch's histogram
-- (`dispatchq.store.runtimes`), every attempt's, retried or not.
-- A call stores a group of endings (`dispatchq.store.group`: the requests a worker ends at
-- about the same time), one after the other, as if each were a call of its own, except that
-- their batches' counters are added up and written once at the end (`count`,
-- lua/_counters.lua): one HINCRBY per batch and field, not per ending.
-- Returns, per ending, 1 when this call finished the request, 0 when it was done already,
-- -1 when refused (above).
-- KEYS, ARGV: the group's (`run_group`, lua/_group.lua). An ending's KEYS: record,
-- [result, [follow set, outcome so far]]. ARGV: ttl, exit code, batch key or '', error
-- entry or '', batch error list, its cap, digest or '', result value or '',
-- result ttl or '', request ID or '', batch ID or '', stream or '', its cap, request ID
-- JSON-escaped, event tail, notify_url or '', [retry set, request ID (plain), the batch's
-- items hash or '', run-time field or ''].
local function finish(KEYS, ARGV)
  local record = KEYS[1]
  local found = redis.call('HMGET', record, 'state', 'digest', 'ends', 'deadline')
  local state = found[1]
  if ARGV[7] ~= '' and found[2] and found[2] ~= ARGV[7] then return -1 end
  if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[10]) end
  redis.call('EXPIRE', record, ARGV[1])
  if state == 'done' then return 0 end
  local events_on, attempt = ARGV[12] and ARGV[12] ~= '', nil
  if events_on then  -- its completion event's attempt: how many times it ended
    attempt = tonumber(found[3] or '0') + 1
    redis.call('HSET', record, 'state', 'done', 'exit_code', ARGV[2], 'ends', attempt)
  else
    redis.call('HSET', record, 'state', 'done', 'exit_code', ARGV[2])
  end
  if found[4] then redis.call('HDEL', record, 'deadline') end
  if KEYS[4] then redis.call('DEL', KEYS[4]) end
  local done_now = nil  -- the batch's `done` count with this ending, when it counts
  if ARGV[3] ~= '' then
    batch_move(ARGV[3], state, 'done', count)
    local again = false
    if ARGV[2] == '2' and ARGV[17] and ARGV[17] ~= '' then
      local b = redis.call('HMGET', ARGV[3], 'max_attempts', 'state')
      local r = redis.call('HMGET', record, 'attempt', 'item')
      local item, attempt = r[2] or ARGV[18], tonumber(r[1] or '1')
      -- retryable only with what re-running it needs kept, and a next ID of 200 at most
      if tonumber(b[1] or '1') > attempt and b[2] ~= 'cancelled'
          and redis.call('HEXISTS', ARGV[19], item) == 1
          and #item + 1 + #tostring(attempt + 1) <= 200 then
        again = true
        local now = redis.call('TIME')
        redis.call('ZADD', ARGV[17], 'NX', now[1], ARGV[11] .. '\31' .. item)
      end
    end
    if ARGV[20] and ARGV[20] ~= '' then count(ARGV[3], ARGV[20], 1) end
    if not again then
      done_now = count_and_read(ARGV[3], 'done', 1)
      count(ARGV[3], 'exit:' .. ARGV[2], 1)
    end
    -- the batch's TTL renewed every 100th ending (and by each retry), not by each one
    if not done_now or done_now % 100 == 1 then redis.call('EXPIRE', ARGV[3], ARGV[1]) end
    if ARGV[4] ~= '' and redis.call('LLEN', ARGV[5]) < tonumber(ARGV[6]) then
      redis.call('RPUSH', ARGV[5], ARGV[4])
      redis.call('EXPIRE', ARGV[5], ARGV[1])
    end
  end
  if KEYS[2] then store_result(KEYS[2], ARGV[8], ARGV[9]) end
  if events_on then
    emit_done_events(attempt, ARGV[3], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16],
                     done_now)
  end
  return 1
end

return run_group(finish)
