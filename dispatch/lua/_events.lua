-- Completion events (`dispatch.completion`): one entry on the event stream per request
-- that ends and per batch that finishes, appended by the script that stores the ending,
-- so an event is never lost nor doubled by a crash between two writes. Prepended to every
-- script that calls `emit_done_events` (`dispatch.records`).
-- record: the request record; batch: the batch key or ''; batch_id: its ID or '';
-- stream, maxlen: the stream and its approximate cap; rid: the request ID, JSON-escaped;
-- tail: the rest of the request event's JSON object (after its first member);
-- url: the request's notify_url or ''.
local function xadd_event(stream, maxlen, body, url)
  if url and url ~= '' then
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', body, 'notify_url', url)
  else
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', body)
  end
end

local function emit_done_events(record, batch, batch_id, stream, maxlen, rid, tail, url)
  local attempt = redis.call('HINCRBY', record, 'ends', 1)
  xadd_event(stream, maxlen, '{"v":1,"type":"request.finished","event_id":"request:' .. rid
    .. ':' .. attempt .. '","attempt":' .. attempt .. ',' .. tail, url)
  if batch == '' then return end
  local total = tonumber(redis.call('HGET', batch, 'total') or '0')
  local done = tonumber(redis.call('HGET', batch, 'done') or '0')
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
