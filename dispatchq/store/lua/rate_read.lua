-- The shared dispatch rate in force now. KEYS: the rate hash. ARGV: ceiling, recovery
-- seconds. Returns it as a string.
local h = redis.call('HMGET', KEYS[1], 'rate', 'cut_at')
return tostring(current_rate(h[1], h[2], clock(), ARGV[1], ARGV[2]))
