-- The write-ahead record (`RecordStore.mark_dispatched`): the child and evaluation, at
-- once, for a group of requests (`dispatchq.store.group`: those a worker's dispatches
-- answered at about the same time). Their batches' counters stay as they are
-- (`dispatching` and `monitoring` count as one: lua/_batch.lua), and no TTL is renewed:
-- the take (begin.lua) found the record's a moment before. One HSET per request.
-- KEYS, ARGV: the group's (`run_group`, lua/_group.lua). A request's KEYS: record.
-- ARGV: dispatched job ID, eval ID.
local function write_ahead(KEYS, ARGV)
  local record = KEYS[1]
  redis.call('HSET', record, 'state', 'monitoring', 'dispatched_job_id', ARGV[1],
             'eval_id', ARGV[2])
  return 1
end

return run_group(write_ahead)
