-- Completion events (`dispatchq.store.completion`): one entry on the event stream per request
-- that ends and per batch that finishes, appended by the script that stores the ending,
-- so an event is never lost nor doubled by a crash between two writes. Uses the counters of
-- lua/_counters.lua. Prepended to every script that calls `emit_done_events`
-- (`dispatchq.store.scripts`).
-- attempt: the request's ends so far, this one's included (the record's `ends`, written by
-- done.lua); batch: the batch key or ''; batch_id: its ID or '';
-- stream, maxlen: the stream and its approximate cap; rid: the request ID, JSON-escaped;
-- tail: the rest of the request event's JSON object (after its first member);
-- url: the request's notify_url or ''; done: the batch's `done` count with this ending
-- (nil when it did not count there: no batch, or an item that will run again).
-- The stream is kept to about `maxlen` entries, but never by dropping one that the
-- notifier's group (`keys.NOTIFIER_GROUP`) has not read and acknowledged: a webhook is
-- never trimmed away unseen while the notifier is stopped (the stream grows past maxlen
-- instead, until it catches up). Every TRIM_EVERY entries (for a batch's items: every
-- TRIM_EVERY endings of the batch, and its last), the entries beyond maxlen that
-- the group is done with (older than its oldest pending entry, or up to the last it read
-- when none is pending) are trimmed; with no such group, those beyond maxlen.
local NOTIFIER_GROUP, TRIM_EVERY = 'dispatchq-notifier', 100

local function trim_events(stream, maxlen, always)
  local len = redis.call('XLEN', stream)
  local over = len - tonumber(maxlen)
  if over <= 0 or (not always and len % TRIM_EVERY ~= 0) then return end
  local upto = '+'
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == NOTIFIER_GROUP then
      upto = info['last-delivered-id']
      if tonumber(info['pending']) > 0 then
        upto = '(' .. redis.call('XPENDING', stream, NOTIFIER_GROUP)[2]
      end
    end
  end
  local done = redis.call('XRANGE', stream, '-', upto, 'COUNT', over)
  if #done == 0 then return end
  local last = done[#done][1]
  local dash = string.find(last, '-', 1, true)
  local seq = tonumber(string.sub(last, dash + 1)) + 1
  redis.call('XTRIM', stream, 'MINID', string.sub(last, 1, dash) .. string.format('%d', seq))
end

-- check: nil to look at the stream's length (trimming at every TRIM_EVERY-th entry),
-- 'always' to trim now if it is over its cap, false not to look.
local function xadd_event(stream, maxlen, body, url, check)
  if url and url ~= '' then
    redis.call('XADD', stream, '*', 'event', body, 'notify_url', url)
  else
    redis.call('XADD', stream, '*', 'event', body)
  end
  if check ~= false then trim_events(stream, maxlen, check == 'always') end
end

local function emit_done_events(attempt, batch, batch_id, stream, maxlen, rid, tail, url, done)
  -- A batch's item looks at the stream's length only at every TRIM_EVERY-th ending of its
  -- batch and at its last (a command less per item); a request in no batch, every time.
  local total, check = 0, nil
  if batch ~= '' then
    check = false
    if done then
      total = counter(batch, 'total')  -- read once per call (lua/_counters.lua)
      if done % TRIM_EVERY == 0 or done >= total then check = 'always' end
    end
  end
  xadd_event(stream, maxlen, '{"v":1,"type":"request.finished","event_id":"request:' .. rid
    .. ':' .. attempt .. '","attempt":' .. attempt .. ',' .. tail, url, check)
  if batch == '' or not done then return end
  if total == 0 or done < total then return end
  local now = redis.call('TIME')
  if redis.call('HSETNX', batch, 'finished_at', now[1] .. '.' .. string.format('%06d', now[2])) == 0 then
    return
  end
  -- A batch finishes again after `batch retry` (which clears finished_at): its next
  -- finishes are events of their own, `batch:<id>~<n>` (batch IDs never end in '~<n>').
  local round = redis.call('HINCRBY', batch, 'finishes', 1)
  local event_id = 'batch:' .. batch_id
  if round > 1 then event_id = event_id .. '~' .. round end
  flush_counters()  -- the summary below reads the batch's counters
  local fields = redis.call('HGETALL', batch)
  local b, codes = {}, {}
  for i = 1, #fields, 2 do
    local name = fields[i]
    if string.sub(name, 1, 5) == 'exit:' and tonumber(fields[i + 1]) ~= 0 then
      codes[string.sub(name, 6)] = tonumber(fields[i + 1])
    else
      b[name] = fields[i + 1]
    end
  end
  local status = 'succeeded'
  if b['state'] == 'cancelled' then
    status = 'cancelled'
  elseif (codes['0'] or 0) < total then
    status = 'failed'
  end
  local event = {
    v = 1, type = 'batch.finished', event_id = event_id, batch_id = batch_id,
    job_id = b['job_id'] or '', status = status, total = total, done = done,
    succeeded = codes['0'] or 0, failed = done - (codes['0'] or 0),
    exit_codes = codes, at = tonumber(now[1]) + tonumber(now[2]) / 1e6,
  }
  xadd_event(stream, maxlen, cjson.encode(event), b['notify_url'])
end
