-- throttlekit: decide (and charge) a batch of rate-limit checks, and look up blocklist keys.
-- Mirrors src/throttlekit/_algorithms.py exactly, in integer microseconds (values < 2^53).
--
-- KEYS: per check, the key family hash H and an auxiliary key (the sliding log's list, a
--       fixed window's string key, else H again); then one blocklist entry key per
--       looked-up block key.
-- ARGV: now ('' = server TIME), consume (1/0), n checks, n block keys, ttl slack (ms, used
--       only with a client-given now); then per check: kind (fw/sw/tb/tg/sl), field, limit,
--       period_us, capacity, cost, flags (1: independent, 2: probe — decided, never charged).
--       A batch in which any looked-up block key is found charges nothing.
-- Returns: per check allowed, remaining, reset_us, retry_us (-1 = never); then per block
--          key its expiry ('inf' or microseconds) and reason, or false, false.
--#include common
--#include clock now_at=1 slack_at=5
--#include arith
--#include drain
local consume = ARGV[2] == '1'
local n = tonumber(ARGV[3])
local nb = tonumber(ARGV[4])

local out = {}
local charges = {}  -- 9 slots per charge, applied once every check is decided: kind, H,
                    -- aux, field, cost, state, ttl, known, independent
local all_ok = true

for i = 1, n do
  local b = 5 + (i - 1) * 7
  local kind, field = ARGV[b + 1], ARGV[b + 2]
  local limit, p, cap = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local cost, flags = tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7])
  local indep, probe = flags % 2 == 1, flags >= 2
  local H, aux = KEYS[2 * i - 1], KEYS[2 * i]
  local allowed, rem, reset, retry, state, ttl, known = 0, 0, 0, 0, false, 0, false
  if kind == 'fw' then
--#include fixed_window
  elseif kind == 'sw' then
--#include sliding_window
  elseif kind == 'tb' then
--#include token_bucket
  elseif kind == 'tg' then
--#include gcra
  else
--#include sliding_log
  end
  if allowed == 0 and not indep then all_ok = false end
  if state and consume and not probe then
    local c = #charges
    charges[c + 1], charges[c + 2], charges[c + 3], charges[c + 4] = kind, H, aux, field
    charges[c + 5], charges[c + 6], charges[c + 7] = cost, state, ttl
    -- (a refused check's state: the clock stepped back, its state moved to now: stored)
    charges[c + 8], charges[c + 9] = known, indep or allowed == 0
  end
  out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] = allowed, rem, reset, retry
end

local o = 4 * n
local blocked = false
for j = 1, nb do
  local v = call('GET', KEYS[2 * n + j])
  local exp, why = false, false
  if v then
    local sp = find(v, ' ', 1, true)
    local e = sub(v, 1, sp - 1)
    if e == 'inf' or tonumber(e) > now then
      exp, why = e, sub(v, sp + 1)
      blocked = true
    end
  end
  out[o + 2 * j - 1], out[o + 2 * j] = exp, why
end

-- all-or-nothing: charge only when every dependent check allows (independent ones alone),
-- and nothing at all for a blocked request
if not blocked then
  for j = 1, #charges, 9 do
    if all_ok or charges[j + 8] then
      local H, aux, field, cost = charges[j + 1], charges[j + 2], charges[j + 3], charges[j + 4]
      local state, ttl, known = charges[j + 5], charges[j + 6], charges[j + 7]
      if charges[j] == 'sl' then
--#include sliding_log_charge
      elseif charges[j] == 'fw' then
--#include fixed_window_charge
      else
--#include set_state
      end
    end
  end
end
return out
