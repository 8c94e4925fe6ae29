-- The worker's non-blocking fetch (`dispatchq.broker.fetch`): the interactive lane (the queue) first,
-- else the next tenant in turn (weighted round robin) and its next batch in turn, moved
-- into the consumer's in-flight list in this one step. nil when every lane is empty, else
-- {item as stored in the in-flight list, deliveries so far or -1}. Deliveries are counted
-- in the request record when ARGV[1] names the task and the item is a message of it; if
-- Redis refuses that (the key holds something else), -2: the item is still taken, and
-- the worker dead-letters it, instead of an error that would leave it in flight.
-- KEYS: queue, in-flight list. ARGV: task name (or ''), request record key prefix, seconds
-- the record is kept, the six lane key prefixes (`keys.lane_keys`), then tenant, weight
-- pairs (a tenant not named has weight 1).
local k = lane_args(ARGV, 4)
local item = redis.call('RPOPLPUSH', KEYS[1], KEYS[2])
local stored = item
if not item then
  -- with no weights given, every tenant's turn is one message: it is rotated as it is read
  local weighted = #ARGV >= 10
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
    else
      local lane = k.lane .. batch
      item = redis.call('RPOP', lane)
      if item then
        stored = '\30' .. tenant .. '\30' .. batch .. '\30' .. item
        redis.call('LPUSH', KEYS[2], stored)
        local weight = 1
        for i = 10, #ARGV, 2 do
          if ARGV[i] == tenant then weight = tonumber(ARGV[i + 1]) end
        end
        -- a tenant of weight 1 has its turn of one message: no credit kept
        if weighted and (weight <= 1 or redis.call('HINCRBY', k.credit, tenant, 1) >= weight) then
          if weight > 1 then redis.call('HDEL', k.credit, tenant) end
          redis.call('RPOPLPUSH', k.tenants, k.tenants)
        end
        -- a lane this fetch emptied is unregistered by the next fetch that finds it empty
        break
      end
      lane_unregister(k, batch, tenant)
    end
  end
  if not item then return false end
end
if ARGV[1] == '' then return {stored, -1} end
local ok, message = pcall(cjson.decode, item)
local headers = ok and type(message) == 'table' and message['headers']
if type(headers) ~= 'table' or headers['task'] ~= ARGV[1] or type(headers['id']) ~= 'string'
    or headers['id'] == '' then
  return {stored, -1}
end
local record = ARGV[2] .. headers['id']
local deliveries = redis.pcall('HINCRBY', record, 'deliveries', 1)
if type(deliveries) ~= 'number' then return {stored, -2} end
redis.call('EXPIRE', record, ARGV[3])
return {stored, deliveries}
