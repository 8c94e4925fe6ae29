-- Take dispatch tokens from the shared rate (a GCRA on the rate hash's `tat`).
-- KEYS: the rate hash. ARGV: ceiling, burst, recovery seconds, ttl, tokens wanted.
-- Returns {n, '0', rate} when n >= 1 tokens (at most those wanted) are granted, else
-- {0, seconds to wait, rate}. Lua numbers would reach the reply truncated: strings.
local now = clock()
local h = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'cut_at')
local rate = current_rate(h[2], h[3], now, ARGV[1], ARGV[3])
local interval = 1 / rate
local tat = math.max(tonumber(h[1] or now), now)
local wait = tat - now - (tonumber(ARGV[2]) - 1) * interval
if wait > 0 then return {0, tostring(wait), tostring(rate)} end
local granted = math.min(tonumber(ARGV[5]), math.floor(-wait / interval) + 1)
redis.call('HSET', KEYS[1], 'tat', tostring(tat + granted * interval))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {granted, '0', tostring(rate)}
