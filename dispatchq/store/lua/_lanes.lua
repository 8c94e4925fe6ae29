-- Batch lanes (`dispatchq.broker.fetch`, keys in `dispatchq.store.keys`): a batch's messages wait in a lane
-- list of their own, registered per queue in a ring of tenants, each with a ring of its
-- batches. Prepended to every script that calls `lane_args` (`dispatchq.store.records`).
--
-- An in-flight item fetched from a lane is stored wrapped, "\30<tenant>\30<batch>\30<item>",
-- so that giving it back returns it to its own lane (kombu's items are JSON objects: they
-- never start with \30).
local function lane_args(argv, i)
  return {lane = argv[i], lanes = argv[i + 1], tenants = argv[i + 2], tpre = argv[i + 3],
          tsuf = argv[i + 4], credit = argv[i + 5]}
end

local function lane_register(k, batch, tenant)
  if redis.call('HSETNX', k.lanes, batch, tenant) == 1 then
    local ring = k.tpre .. tenant .. k.tsuf
    if redis.call('LPUSH', ring, batch) == 1 then redis.call('LPUSH', k.tenants, tenant) end
  end
end

local function lane_unregister(k, batch, tenant)
  redis.call('HDEL', k.lanes, batch)
  local ring = k.tpre .. tenant .. k.tsuf
  redis.call('LREM', ring, 0, batch)
  if redis.call('EXISTS', ring) == 0 then
    redis.call('LREM', k.tenants, 0, tenant)
    redis.call('HDEL', k.credit, tenant)
  end
end

-- Messages into a batch's lane, at the end fetched last, and the lane registered.
local function lane_push(k, batch, tenant, items)
  redis.call('LPUSH', k.lane .. batch, unpack(items))
  lane_register(k, batch, tenant)
end

-- A stored in-flight item back where it came from: its lane, or the queue.
local function lane_give_back(k, queue, stored)
  if string.byte(stored, 1) == 30 then
    local a = string.find(stored, '\30', 2, true)
    local b = a and string.find(stored, '\30', a + 1, true)
    if b then
      lane_push(k, string.sub(stored, a + 1, b - 1), string.sub(stored, 2, a - 1),
                {string.sub(stored, b + 1)})
      return
    end
  end
  redis.call('LPUSH', queue, stored)
end
