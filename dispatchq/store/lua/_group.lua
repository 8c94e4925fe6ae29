-- A script that takes a group of calls (`dispatchq.store.group`): `run_group(one)` runs
-- `one(KEYS, ARGV)` for each call, one after the other, with that call's own KEYS and ARGV,
-- then writes the counters they added up (`flush_counters`, lua/_counters.lua), and
-- returns their answers in order (an error reply for a call Redis refused).
-- The script's KEYS: each call's, one after the other. ARGV: the number of calls n, then
-- each one's number of keys and of arguments (2n numbers), then each one's arguments.
-- Prepended to every script that calls `run_group` (`dispatchq.store.scripts`).
local function run_group(one)
  local n = tonumber(ARGV[1])
  local key_at, arg_at, answers = 1, 2 + 2 * n, {}
  for i = 1, n do
    local nkeys, nargs = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
    local k, a = {}, {}
    for j = 1, nkeys do k[j] = KEYS[key_at + j - 1] end
    for j = 1, nargs do a[j] = ARGV[arg_at + j - 1] end
    key_at, arg_at = key_at + nkeys, arg_at + nargs
    -- a call Redis refuses (a key of another type...) is that call's error alone: the
    -- others go on, and the counters of all are written
    local ok, answer = pcall(one, k, a)
    if not ok then
      answer = redis.error_reply(type(answer) == 'table' and answer.err or tostring(answer))
    end
    answers[i] = answer
  end
  flush_counters()
  return answers
end
