-- A batch's progress by state (`dispatchq.store.batches`): every script that moves a request of a
-- batch from one state to another moves it between the batch's counters in the same step,
-- so that counts stay exact and reading them is one HGETALL whatever the batch's size.
-- Counted: `st:dispatching`, `st:monitoring`, `st:scheduled`, `st:running`; `queued` is
-- what is neither counted there nor done (total - the rest), done is `done`/`exit:<code>`.
-- Prepended to every script that calls `batch_move` (`dispatchq.store.records`).
local BATCH_COUNTED = {dispatching = true, monitoring = true, scheduled = true, running = true}

local function batch_move(batch, from, to)
  if not batch or batch == '' or from == to then return end
  if from and BATCH_COUNTED[from] then redis.call('HINCRBY', batch, 'st:' .. from, -1) end
  if to and BATCH_COUNTED[to] then redis.call('HINCRBY', batch, 'st:' .. to, 1) end
end
