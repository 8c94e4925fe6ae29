-- Store an outcome under its result key in Celery's result format (the value is encoded
-- by the caller) and publish it on the channel of the same name, which wakes `wait()`:
-- what Celery's Redis backend does. Prepended to every script that calls it
-- (`dispatchq.store.records`), so storing a result is written once.
local function store_result(key, value, ttl)
  if tonumber(ttl) > 0 then
    redis.call('SET', key, value, 'EX', ttl)
  else
    redis.call('SET', key, value)
  end
  redis.call('PUBLISH', key, value)
end
