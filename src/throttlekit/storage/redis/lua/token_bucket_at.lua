-- throttlekit: one token_bucket check on the caller's clock (the storage's default clock):
-- the block of _token_bucket.lua, answering the state it found ("last W R", or nil), from
-- which the caller computes the Decision with the same arithmetic. Lua turns numbers into
-- strings slowly (about 0.35 us each): an answer of four numbers cost 1.5 us of Redis CPU.
-- KEYS, ARGV: those of _single.lua, now given (never '').
--#include common
local now, slack, cost = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[2])
local H, field = KEYS[1], ARGV[4]
if cost <= 0 then return call('HGET', H, field) end  -- nothing to charge: only read
local limit, p, cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local allowed, rem, reset, retry, state, ttl, known = 0, 0, 0, 0, false, 0, false
--#include arith
--#include drain
--#include token_bucket
if state then
--#include set_state
end
return v
