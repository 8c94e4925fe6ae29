-- A rejected message back to its lane or queue (the end fetched last), unless it already
-- left the in-flight list (`dispatchq.broker.fetch`). KEYS: in-flight list, queue. ARGV: the item as
-- stored, the six lane key prefixes.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  lane_give_back(lane_args(ARGV, 2), KEYS[2], ARGV[1])
end
