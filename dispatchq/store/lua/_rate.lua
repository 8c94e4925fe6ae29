-- The shared dispatch rate (`dispatchq.core.backpressure`): the rate after the last cut,
-- recovered linearly since. Prepended to every script that calls `current_rate`.
-- ceiling: dispatches per second at most; recovery: seconds from the floor to the ceiling.
local function current_rate(h_rate, h_cut, now, ceiling, recovery)
  if not h_rate then return tonumber(ceiling) end
  local climbed = (now - tonumber(h_cut)) * tonumber(ceiling) / tonumber(recovery)
  return math.min(tonumber(ceiling), tonumber(h_rate) + climbed)
end
