-- Claim the next attempt of batch items (`dispatchq.store.retries`: `dispatchq batch retry`, and the
-- automatic retries of `--max-attempts`), atomically per item: an item is claimed only if
-- its attempt is still the one the caller read (compare and set on the attempts hash) and
-- that attempt is done without success, so running a retry twice, or while one is in
-- flight, dispatches nothing twice. A claimed item's latest attempt leaves the batch's done
-- counts (unless the retry set held it: done.lua did not count it), the batch may finish
-- again (finished_at cleared), the new attempt's record is created (queued, with its
-- digest, `attempt` and `item`: its first request ID) and its message joins the lane.
-- Mode 'auto' claims only items in the retry set (failed in their own run, attempts left);
-- 'all' claims every item that did not succeed. A member of the retry set that cannot be
-- claimed (claimed already, or no longer failed) leaves it.
-- KEYS: batch, attempts hash, retry set. ARGV: ttl, request record prefix, batch ID,
-- tenant, mode, the six lane key prefixes, then six per item: the item's first request
-- ID, its attempt as read, that attempt's request ID, the next attempt's request ID, its
-- digest, its message. Returns per item 1 (claimed), 0, or 2 when a record of the next
-- attempt's ID exists already (with a state or digest): a retry never adopts a record it
-- did not make (producers may not use such IDs, and a worker refuses a message of one
-- without its record, so this should not happen; the item is left as it is, and
-- reported). What a refused message's fetch counted there (`deliveries`) is dropped.
local batch, attempts, due = KEYS[1], KEYS[2], KEYS[3]
local ttl, p_request, batch_id, tenant, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local k = lane_args(ARGV, 6)
local out, messages = {}, {}
for i = 12, #ARGV, 6 do
  local item, n, latest, next_id = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local member = batch_id .. '\31' .. item
  local claimed = 0
  local f = redis.call('HMGET', p_request .. latest, 'state', 'exit_code')
  local made = redis.call('HMGET', p_request .. next_id, 'state', 'digest')
  if made[1] or made[2] then
    claimed = 2
  elseif (redis.call('HGET', attempts, item) or '1') == n and f[1] == 'done' and f[2]
      and f[2] ~= '0' then
    local was_due = redis.call('ZREM', due, member) == 1
    if mode == 'all' or was_due then
      if not was_due then
        redis.call('HINCRBY', batch, 'done', -1)
        redis.call('HINCRBY', batch, 'exit:' .. f[2], -1)
      end
      local attempt = tonumber(n) + 1
      redis.call('HSET', attempts, item, attempt)
      local record = p_request .. next_id
      redis.call('DEL', record)
      redis.call('HSET', record, 'state', 'queued')
      redis.call('HSET', record, 'digest', ARGV[i + 4], 'attempt', attempt, 'item', item)
      redis.call('EXPIRE', record, ttl)
      messages[#messages + 1] = ARGV[i + 5]
      claimed = 1
    end
  elseif mode == 'auto' then
    redis.call('ZREM', due, member)
  end
  out[#out + 1] = claimed
end
if #messages > 0 then
  lane_push(k, batch_id, tenant, messages)
  redis.call('HINCRBY', batch, 'retries', #messages)
  redis.call('HDEL', batch, 'finished_at')
  redis.call('EXPIRE', batch, ttl)
  redis.call('EXPIRE', attempts, ttl)
end
return out
