-- Give a consumer's in-flight messages back (`dispatchq.broker.fetch`), each to its lane or queue,
-- and forget the list: if the consumer is gone (no lease), or unconditionally when ARGV[2]
-- is '1' (the caller's own, at close). KEYS: lease, in-flight list, queue, registry.
-- ARGV: registry member, '0' or '1', the six lane key prefixes.
if ARGV[2] == '0' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local k = lane_args(ARGV, 3)
local moved = 0
while true do
  local stored = redis.call('RPOP', KEYS[2])
  if not stored then break end
  lane_give_back(k, KEYS[3], stored)
  moved = moved + 1
end
redis.call('SREM', KEYS[4], ARGV[1])
return moved
