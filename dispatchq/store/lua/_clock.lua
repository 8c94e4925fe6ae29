-- The server's clock in seconds (with microseconds). Prepended to every script that calls
-- `clock` (`dispatchq.store.records`).
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
