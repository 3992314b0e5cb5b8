-- throttlekit: decide (and charge) a batch of rate-limit checks, and look up blocklist keys.
-- Mirrors src/throttlekit/_algorithms.py exactly, in integer microseconds (values < 2^53).
--
-- KEYS: per check, the key family hash H and an auxiliary key (the sliding log's list, or
--       H again); then one blocklist entry key per looked-up block key.
-- ARGV: now ('' = server TIME), consume (1/0), n checks, n block keys, ttl slack (ms, used
--       only with a client-given now); then per check: kind (fw/sw/tb/sl), field, limit,
--       period_us, capacity, cost, flags (1: independent, 2: probe — decided, never charged).
--       A batch in which any looked-up block key is found charges nothing.
-- Returns: per check allowed, remaining, reset_us, retry_us (-1 = never); then per block
--          key its expiry ('inf' or microseconds) and reason, or false, false.
--#include clock
local now, slack = clock(1, 5)
--#include common
--#include fixed_window
--#include sliding_window
--#include token_bucket
--#include sliding_log
local DECIDE = {fw = fixed_window, sw = sliding_window, tb = token_bucket, sl = sliding_log}
local consume = ARGV[2] == '1'
local n = tonumber(ARGV[3])
local nb = tonumber(ARGV[4])

local out = {}
local charges = {}  -- {write, H, aux, field, cost, a, b, c, independent}: applied once
                    -- every check is decided
local all_ok = true

for i = 1, n do
  local b = 5 + (i - 1) * 7
  local cost, flags = tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7])
  local indep, probe = flags % 2 == 1, flags >= 2
  local H, aux, field = KEYS[2 * i - 1], KEYS[2 * i], ARGV[b + 2]
  local allowed, rem, reset, retry, write, x, y, z = DECIDE[ARGV[b + 1]](
    H, aux, field, tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5]), cost)
  if allowed == 0 and not indep then all_ok = false end
  if write and consume and not probe then
    charges[#charges + 1] = {write, H, aux, field, cost, x, y, z, indep}
  end
  out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] = allowed, rem, reset, retry
end

local o = 4 * n
local blocked = false
for j = 1, nb do
  local v = call('GET', KEYS[2 * n + j])
  local exp, why = false, false
  if v then
    local sp = string.find(v, ' ', 1, true)
    local e = string.sub(v, 1, sp - 1)
    if e == 'inf' or tonumber(e) > now then
      exp, why = e, string.sub(v, sp + 1)
      blocked = true
    end
  end
  out[o + 2 * j - 1], out[o + 2 * j] = exp, why
end

-- all-or-nothing: charge only when every dependent check allows (independent ones alone),
-- and nothing at all for a blocked request
if not blocked then
  for j = 1, #charges do
    local w = charges[j]
    if all_ok or w[9] then w[1](w[2], w[3], w[4], w[5], w[6], w[7], w[8]) end
  end
end
return out
