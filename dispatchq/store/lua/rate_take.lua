-- Take dispatch tokens from the shared rate (a GCRA on the rate hash's `tat`), reserving
-- ahead: the tokens whose turn comes within the horizon are granted at once, each to be
-- spent at its turn, so that a worker at the rate limit makes one call per horizon's worth
-- of dispatches instead of polling for each.
-- KEYS: the rate hash. ARGV: ceiling, burst, recovery seconds, ttl, tokens wanted, horizon
-- (seconds).
-- Returns {n, wait, rate} when n >= 1 tokens (at most those wanted) are granted: the k-th
-- (from 0) may be spent `wait + k / rate` seconds from now (at once when that is not
-- positive); else {0, seconds to wait, rate}. Lua numbers would reach the reply truncated:
-- strings.
local now = clock()
local h = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'cut_at')
local rate = current_rate(h[2], h[3], now, ARGV[1], ARGV[3])
local interval = 1 / rate
local tat = math.max(tonumber(h[1] or now), now)
local wait = tat - now - (tonumber(ARGV[2]) - 1) * interval
local horizon = tonumber(ARGV[6])
if wait > horizon then return {0, tostring(wait - horizon), tostring(rate)} end
local granted = math.min(tonumber(ARGV[5]), math.floor((horizon - wait) / interval) + 1)
redis.call('HSET', KEYS[1], 'tat', tostring(tat + granted * interval))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {granted, tostring(wait), tostring(rate)}
