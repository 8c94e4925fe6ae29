-- Replay a dead letter (`dispatchq.store.dlq.replay`): its message back on its queue, and the
-- request un-finished: the counts done.lua added to its batch are taken back, so that
-- the replayed run is counted once when it finishes; the outcome and the delivery count
-- are cleared, the write-ahead fields kept.
-- KEYS: the dead-letter list, the queue, [result, record].
-- ARGV: the entry, the message, ttl, batch key prefix.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
if #KEYS == 4 then
  local record = KEYS[4]
  redis.call('DEL', KEYS[3])
  local state, code, batch = unpack(redis.call(
    'HMGET', record, 'state', 'exit_code', 'batch_id'))
  if state == 'done' and batch and batch ~= '' then
    local counters = ARGV[4] .. batch
    redis.call('HINCRBY', counters, 'done', -1)
    if code then redis.call('HINCRBY', counters, 'exit:' .. code, -1) end
  elseif batch and batch ~= '' then
    batch_move(ARGV[4] .. batch, state, 'queued')
  end
  redis.call('HDEL', record, 'deliveries', 'exit_code')
  redis.call('HSET', record, 'state', 'queued')
  redis.call('EXPIRE', record, ARGV[3])
end
return 1
