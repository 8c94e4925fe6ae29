-- Celery's guard against a late duplicate, as one script: leave a stored SUCCESS alone,
-- else store and publish the new meta (`dispatchq.broker.app.GuardedRedisBackend`).
-- KEYS: the result key. ARGV: meta, seconds to keep (0: no expiry).
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
store_result(KEYS[1], ARGV[1], ARGV[2])
return 1
