-- Halve the shared rate after an overload signal (Nomad's 429, resources exhausted),
-- at most once per cooldown, never below the floor.
-- KEYS: the rate hash. ARGV: ceiling, floor, recovery seconds, cooldown seconds, ttl.
-- Returns the rate in force (a string).
local now = clock()
local h = redis.call('HMGET', KEYS[1], 'rate', 'cut_at')
local rate = current_rate(h[1], h[2], now, ARGV[1], ARGV[3])
if h[2] and now - tonumber(h[2]) < tonumber(ARGV[4]) then return tostring(rate) end
rate = math.max(tonumber(ARGV[2]), rate / 2)
redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'cut_at', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[5])
return tostring(rate)
