-- The head of the single-check scripts: one check of one strategy, the common case of
-- batch.lua without its generic loop (the sliding log's script adds aux = KEYS[2], the
-- token bucket's cap = ARGV[7]).
-- KEYS: the key family hash H (and the sliding log's list).
-- ARGV: now ('' = server TIME), cost (-1 - cost for a check decided but not charged),
--       ttl slack (ms, used only with a client-given now), field, limit, period_us,
--       capacity (token_bucket).
-- Returns "allowed remaining reset_us retry_us" (retry -1 = never): a string is cheaper to
-- send back than an array.
--#include common
--#include clock now_at=1 slack_at=3
local cost = tonumber(ARGV[2])
local charge = cost >= 0
if not charge then cost = -1 - cost end
local H, field, limit, p = KEYS[1], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local allowed, rem, reset, retry, state, ttl, known = 0, 0, 0, 0, false, 0, false
