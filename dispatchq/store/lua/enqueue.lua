-- Enqueue a chunk of requests (`dispatchq.producer.enqueue`): per request, create its record
-- (queued) and push its message, unless the record exists: a request in no batch onto the
-- queue (the interactive lane), a batch's onto its batch's lane (`_lanes.lua`).
-- KEYS: the queue. ARGV: ttl, mode, then the key prefixes of a request record, a result, a
-- batch, a batch's request list and its items hash (from `keys`), the six lane key
-- prefixes, then two arguments per request: "<request ID>\x1f<batch ID or nothing>\x1f
-- <digest>\x1f<tenant or nothing>\x1f<item or nothing>" and the message; an item (JSON,
-- which escapes \x1f) is what re-running a batch member needs (`keys.batch_items`).
-- Returns per request 1 (new), 2 (enqueued again: its earlier run ended without
-- dispatching anything), 0 (exists: skipped) or 3 (the ID names another request, whose
-- digest differs: skipped). New batch members join the batch's list; the items of those
-- enqueued (1 or 2) are kept.
-- Mode 'check' writes nothing (what would be done); mode 'all' (a batch: all or nothing)
-- writes nothing either when any request would be 3; mode 'each' skips those alone.
--
-- Cost per request is what bounds a batch enqueue (bench/enqueue): one HMGET reads what
-- exists (first, for every request, so that nothing is written before a clash is known),
-- then a new request is two calls: HSET creates the record with its digest
-- (`dispatchq.core.request.request_digest`: a worker refuses a message whose digest differs),
-- EXPIRE dates it.
local queue, ttl, mode = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local p_request, p_result, p_batch, p_requests = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local p_items = ARGV[7]
local k = lane_args(ARGV, 8)
local first = 14
local out, found, clash = {}, {}, false
for i = first, #ARGV, 2 do
  local sep = string.find(ARGV[i], '\31', 1, true)
  local sep2 = string.find(ARGV[i], '\31', sep + 1, true)
  local sep3 = string.find(ARGV[i], '\31', sep2 + 1, true)
  local rid = string.sub(ARGV[i], 1, sep - 1)
  local digest = string.sub(ARGV[i], sep2 + 1, sep3 - 1)
  local f = redis.call('HMGET', p_request .. rid, 'state', 'dispatched_job_id', 'exit_code', 'digest')
  local flag = 1
  if f[1] or f[4] then
    if f[4] and f[4] ~= digest then
      flag, clash = 3, true
    elseif f[1] == 'done' and (not f[2] or f[2] == '') then
      flag = 2
    else
      flag = 0
    end
  end
  out[#out + 1] = flag
  found[#found + 1] = f
end
if mode == 'check' or (mode == 'all' and clash) then return out end
local messages, lists, laned, tenant_of, kept = {}, {}, {}, {}, {}
for i = first, #ARGV, 2 do
  local n = (i - first) / 2 + 1
  local flag, f = out[n], found[n]
  local sep = string.find(ARGV[i], '\31', 1, true)
  local sep2 = string.find(ARGV[i], '\31', sep + 1, true)
  local sep3 = string.find(ARGV[i], '\31', sep2 + 1, true)
  local sep4 = string.find(ARGV[i], '\31', sep3 + 1, true)
  local rid, batch_id = string.sub(ARGV[i], 1, sep - 1), string.sub(ARGV[i], sep + 1, sep2 - 1)
  local digest = string.sub(ARGV[i], sep2 + 1, sep3 - 1)
  local record = p_request .. rid
  if flag == 2 then
    if batch_id ~= '' and f[3] then
      redis.call('HINCRBY', p_batch .. batch_id, 'done', -1)
      redis.call('HINCRBY', p_batch .. batch_id, 'exit:' .. f[3], -1)
    end
    local ends = redis.call('HGET', record, 'ends')
    redis.call('DEL', record, p_result .. rid)
    if ends then redis.call('HSET', record, 'ends', ends) end  -- its next end: next attempt
  end
  if flag == 1 or flag == 2 then
    redis.call('HSET', record, 'state', 'queued', 'digest', digest)
    redis.call('EXPIRE', record, ttl)
    if batch_id == '' then
      messages[#messages + 1] = ARGV[i + 1]
    else
      if not laned[batch_id] then
        laned[batch_id] = {}
        tenant_of[batch_id] = string.sub(ARGV[i], sep3 + 1, sep4 - 1)
        kept[batch_id] = {}
      end
      table.insert(laned[batch_id], ARGV[i + 1])
      if sep4 < #ARGV[i] then
        local items = kept[batch_id]
        items[#items + 1] = rid
        items[#items + 1] = string.sub(ARGV[i], sep4 + 1)
      end
    end
    if flag == 1 and batch_id ~= '' then
      local list = p_requests .. batch_id
      if not lists[list] then lists[list] = {} end
      table.insert(lists[list], rid)
    end
  end
end
if #messages > 0 then redis.call('LPUSH', queue, unpack(messages)) end
for batch_id, items in pairs(laned) do lane_push(k, batch_id, tenant_of[batch_id], items) end
for batch_id, items in pairs(kept) do
  if #items > 0 then
    local key = p_items .. batch_id
    redis.call('HSET', key, unpack(items))
    redis.call('EXPIRE', key, ttl)
  end
end
for list, ids in pairs(lists) do
  redis.call('RPUSH', list, unpack(ids))
  redis.call('EXPIRE', list, ttl)
end
return out
