-- The worker's non-blocking fetch (`dispatchq.broker.fetch`): up to ARGV[4] messages, moved
-- into the consumer's in-flight list in this one step: from the interactive lane (the
-- queue) if it has any, else from the lanes, a message per turn: the next tenant in turn
-- (weighted round robin) and its next batch in turn. When one tenant with one batch is all
-- there is, its lane gives every message of the fetch at once (no other turn to wait for).
-- false when every lane is empty, else a flat list {item as stored in the in-flight list,
-- deliveries so far or -1, ...}. Deliveries are counted in the request record when ARGV[1]
-- names the task and the item is a message of it, and the record is given its TTL if the
-- message came from the interactive lane (a foreign producer's message has no record
-- before this count makes one; a batch's was enqueued with its record, which has a TTL,
-- and any record this count makes there gets one from the take or the ending). If Redis
-- refuses the count (the key holds something else), -2: the item is still taken, and the
-- worker dead-letters it, instead of an error that would leave it in flight.
-- KEYS: queue, in-flight list. ARGV: task name (or ''), request record key prefix, seconds
-- the record is kept, most messages to take, the six lane key prefixes (`keys.lane_keys`),
-- then tenant, weight pairs (a tenant not named has weight 1).
local k = lane_args(ARGV, 5)

local function deliveries_of(item, laned)
  if ARGV[1] == '' then return -1 end
  local ok, message = pcall(cjson.decode, item)
  local headers = ok and type(message) == 'table' and message['headers']
  if type(headers) ~= 'table' or headers['task'] ~= ARGV[1] or type(headers['id']) ~= 'string'
      or headers['id'] == '' then
    return -1
  end
  local record = ARGV[2] .. headers['id']
  local deliveries = redis.pcall('HINCRBY', record, 'deliveries', 1)
  if type(deliveries) ~= 'number' then return -2 end
  -- a batch's message was pushed with its record, which has its TTL; a message of the
  -- interactive lane may be a foreign producer's, whose record this HINCRBY just made
  if not laned then redis.call('EXPIRE', record, ARGV[3]) end
  return deliveries
end

local want = tonumber(ARGV[4])
local taken, stored = {}, {}
local from_queue = redis.call('RPOP', KEYS[1], want)
if from_queue then
  taken, stored = from_queue, from_queue
else
  -- with no weights given, every tenant's turn is one message: it is rotated as it is read
  local weighted = #ARGV >= 11
  local alone = redis.call('LLEN', k.tenants) == 1
  for _ = 1, 100 do  -- bounded: each turn without a message unregisters an empty lane
    local tenant
    if weighted then
      tenant = redis.call('LINDEX', k.tenants, -1)
    else
      tenant = redis.call('RPOPLPUSH', k.tenants, k.tenants)
    end
    if not tenant then break end
    local ring = k.tpre .. tenant .. k.tsuf
    local batch = redis.call('RPOPLPUSH', ring, ring)
    if not batch then
      redis.call('LREM', k.tenants, 0, tenant)
      redis.call('HDEL', k.credit, tenant)
      alone = redis.call('LLEN', k.tenants) == 1
    else
      local lane = k.lane .. batch
      local n = 1
      if alone and redis.call('LLEN', ring) == 1 then n = want - #taken end
      local items = redis.call('RPOP', lane, n)
      if items then
        for _, item in ipairs(items) do
          taken[#taken + 1] = item
          stored[#stored + 1] = '\30' .. tenant .. '\30' .. batch .. '\30' .. item
        end
        local weight = 1
        for i = 11, #ARGV, 2 do
          if ARGV[i] == tenant then weight = tonumber(ARGV[i + 1]) end
        end
        -- a tenant of weight 1 has its turn of one message: no credit kept
        if weighted and (weight <= 1 or redis.call('HINCRBY', k.credit, tenant, 1) >= weight) then
          if weight > 1 then redis.call('HDEL', k.credit, tenant) end
          redis.call('RPOPLPUSH', k.tenants, k.tenants)
        end
        -- a lane this fetch emptied is unregistered by the next fetch that finds it empty
        if #taken >= want then break end
      else
        lane_unregister(k, batch, tenant)
        alone = redis.call('LLEN', k.tenants) == 1
      end
    end
  end
  if #taken == 0 then return false end
end
redis.call('LPUSH', KEYS[2], unpack(stored))
local out = {}
for i, item in ipairs(taken) do
  out[2 * i - 1], out[2 * i] = stored[i], deliveries_of(item, stored[i] ~= item)
end
return out
