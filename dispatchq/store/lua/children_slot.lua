-- Admit one dispatch of a job under its cap of unfinished children.
-- KEYS: the job's children hash, its refresh lock. ARGV: cap, max age seconds, lock ms.
-- Returns 0 (admitted), 1 (full) or -1 (the caller must read the job's summary: it holds
-- the lock).
local now = clock()
local h = redis.call('HMGET', KEYS[1], 'unfinished', 'at', 'since')
if not h[2] or now - tonumber(h[2]) > tonumber(ARGV[2]) then
  if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return -1 end
  if not h[2] then return 1 end
end
if tonumber(h[1]) + tonumber(h[3] or 0) < tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'since', 1)
  return 0
end
return 1
