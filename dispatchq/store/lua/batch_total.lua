-- Raise a batch's total to the items submitted (a resumed batch may hold more than the
-- first submit), never lower it. KEYS: the batch hash. ARGV: the total.
local current = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
if tonumber(ARGV[1]) > current then redis.call('HSET', KEYS[1], 'total', ARGV[1]) end
