-- The tracker's leader lease (`dispatchq.tracker.follower.Lease`): taken when free, renewed
-- by its holder; 1 when the caller holds it now, 0 when another tracker does.
-- KEYS: the lease. ARGV: holder ID, milliseconds.
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
