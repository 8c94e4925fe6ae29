-- Batch counters added up in the script and written at its end (`flush_counters`): one
-- HINCRBY per field however many requests of one batch a call takes or ends (a group of
-- them: `dispatchq.store.group`). `counter` is a field's value with what is pending (one
-- HGET per field and call); `count_and_read` adds and reads. A script that calls `count`
-- calls `flush_counters` before it returns, and before it reads the hash by other means
-- (`run_group`, lua/_group.lua, does).
-- Prepended to every script that calls `count` (`dispatchq.store.scripts`).
local pending_counts, read_counts = {}, {}

local function entry(tbl, key)
  local t = tbl[key]
  if not t then
    t = {}
    tbl[key] = t
  end
  return t
end

local function count(key, field, n)
  local fields = entry(pending_counts, key)
  fields[field] = (fields[field] or 0) + n
end

local function with_pending(key, field, value)
  local fields = pending_counts[key]
  return value + ((fields and fields[field]) or 0)
end

-- `field` of `key` with `n` added now, and what is pending: the first time in a call, one
-- HINCRBY that answers the value; after that nothing until `flush_counters`.
local function count_and_read(key, field, n)
  local read = entry(read_counts, key)
  if read[field] == nil then
    read[field] = redis.call('HINCRBY', key, field, n)
  else
    count(key, field, n)
  end
  return with_pending(key, field, read[field])
end

-- `field` of `key` (a number), read once per call, with what is pending.
local function counter(key, field)
  local read = entry(read_counts, key)
  if read[field] == nil then read[field] = tonumber(redis.call('HGET', key, field) or '0') end
  return with_pending(key, field, read[field])
end

local function flush_counters()
  for key, fields in pairs(pending_counts) do
    local read = read_counts[key]
    for field, n in pairs(fields) do
      if n ~= 0 then
        local now = redis.call('HINCRBY', key, field, n)
        if read and read[field] ~= nil then read[field] = now end
      end
    end
  end
  pending_counts = {}
end
