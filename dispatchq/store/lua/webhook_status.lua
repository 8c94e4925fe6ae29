-- How a completion event's webhook went (`dispatchq.store.webhook_status`), written by the
-- notifier in the field `webhook` of the request's record or the batch's hash, and only
-- while that hash exists: a hash that expired is not made again (it would have no TTL).
-- KEYS: the request record or batch hash. ARGV: the value (JSON).
local record = KEYS[1]
if redis.call('EXISTS', record) == 0 then return 0 end
redis.call('HSET', record, 'webhook', ARGV[1])
return 1
