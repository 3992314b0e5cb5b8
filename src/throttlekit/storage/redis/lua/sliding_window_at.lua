-- throttlekit: one sliding_window check on the caller's clock (the storage's default clock):
-- the block of _sliding_window.lua, answering the state it found ("window cur prev", or
-- nil), from which the caller computes the Decision (see token_bucket_at.lua).
-- KEYS, ARGV: those of _single.lua, now given (never '').
--#include common
local now, slack, cost = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[2])
local H, field = KEYS[1], ARGV[4]
if cost <= 0 then return call('HGET', H, field) end  -- nothing to charge: only read
local limit, p = tonumber(ARGV[5]), tonumber(ARGV[6])
local allowed, rem, reset, retry, state, ttl, known = 0, 0, 0, 0, false, 0, false
--#include arith
--#include sliding_window
if state then
--#include set_state
end
return v
