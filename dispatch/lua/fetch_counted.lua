-- The worker's non-blocking fetch, counting (`worker.fetch`): nil for an empty queue,
-- else {item, deliveries so far, or -1 when the item is not a message of the counted
-- task}. KEYS: queue, in-flight list. ARGV: task name, request record key prefix, seconds
-- the record is kept.
local item = redis.call('RPOPLPUSH', KEYS[1], KEYS[2])
if not item then return false end
local ok, message = pcall(cjson.decode, item)
local headers = ok and type(message) == 'table' and message['headers']
if type(headers) ~= 'table' or headers['task'] ~= ARGV[1] or type(headers['id']) ~= 'string'
    or headers['id'] == '' then
  return {item, -1}
end
local record = ARGV[2] .. headers['id']
local deliveries = redis.call('HINCRBY', record, 'deliveries', 1)
redis.call('EXPIRE', record, ARGV[3])
return {item, deliveries}
