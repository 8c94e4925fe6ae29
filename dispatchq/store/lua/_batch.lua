-- A batch's progress by state (`dispatchq.store.batches`): every script that moves a request of a
-- batch from one state to another moves it between the batch's counters in the same step,
-- so that counts stay exact and reading them is one HGETALL whatever the batch's size.
-- Counted: `st:dispatching` (taken by a worker: the record's `dispatching` and `monitoring`,
-- one counter, so that the write-ahead moves nothing), `st:scheduled`, `st:running`;
-- `queued` is what is neither counted there nor done (total - the rest), done is
-- `done`/`exit:<code>`. (`st:monitoring` was written before; read as `st:dispatching`.)
-- `add`, if given, adds to a counter in place of HINCRBY (done.lua's `count`).
-- Prepended to every script that calls `batch_move` (`dispatchq.store.scripts`).
local BATCH_COUNTER = {dispatching = 'st:dispatching', monitoring = 'st:dispatching',
                       scheduled = 'st:scheduled', running = 'st:running'}

local function batch_hincrby(key, field, n) redis.call('HINCRBY', key, field, n) end

local function batch_move(batch, from, to, add)
  local was, now = from and BATCH_COUNTER[from], to and BATCH_COUNTER[to]
  if not batch or batch == '' or was == now then return end
  add = add or batch_hincrby
  if was then add(batch, was, -1) end
  if now then add(batch, now, 1) end
end
