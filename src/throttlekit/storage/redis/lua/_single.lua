-- The shell of the single-check scripts: one check of one strategy, the common case of
-- batch.lua without its generic loop.
-- KEYS: the key family hash H (and the sliding log's list).
-- ARGV: now ('' = server TIME), cost (-1 - cost for a check decided but not charged),
--       ttl slack (ms, used only with a client-given now), field, limit, period_us,
--       capacity (token_bucket).
-- Returns "allowed remaining reset_us retry_us" (retry -1 = never): a string is cheaper to
-- send back than an array.
--#include clock
local now, slack = clock(1, 3)
--#include common

local function one(decide)
  local cost = tonumber(ARGV[2])
  local charge = cost >= 0
  if not charge then cost = -1 - cost end
  local H, aux, field = KEYS[1], KEYS[2] or KEYS[1], ARGV[4]
  local allowed, rem, reset, retry, write, a, b, c = decide(
    H, aux, field, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), cost)
  if write and charge then write(H, aux, field, cost, a, b, c) end
  return string.format('%.0f %.0f %.0f %.0f', allowed, rem, reset, retry)
end
