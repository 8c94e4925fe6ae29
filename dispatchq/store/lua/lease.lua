-- The tracker's leader lease (`dispatchq.tracker.leader.Lease`): taken when free, renewed
-- by its holder; 1 when the caller holds it now, 0 when another tracker does. Every call
-- also says the caller is alive (KEYS[2], scored with the time; members not heard from
-- in ARGV[3] seconds leave), which is how standbys are seen (`dispatchq.store.liveness`).
-- KEYS: the lease, the trackers. ARGV: holder ID, milliseconds, seconds a tracker is kept.
local now = redis.call('TIME')
local seconds = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('ZADD', KEYS[2], seconds, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', seconds - tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[2], ARGV[3])
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
