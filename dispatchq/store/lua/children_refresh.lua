-- A job's unfinished children as just read from its summary, and the lock released.
-- KEYS: the job's children hash, its refresh lock. ARGV: unfinished children, ttl.
redis.call('HSET', KEYS[1], 'unfinished', ARGV[1], 'at', tostring(clock()), 'since', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
