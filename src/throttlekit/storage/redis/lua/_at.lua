-- The head of the *_at.lua scripts (a check on the caller's clock, answering the state it
-- found): KEYS, ARGV those of _single.lua, now given (never ''); a check that charges
-- nothing only reads the state. (cap: the token bucket's capacity, nil for the others.)
--#include common
local now, slack, cost = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[2])
local H, field = KEYS[1], ARGV[4]
if cost <= 0 then return call('HGET', H, field) end  -- nothing to charge: only read
local limit, p, cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local allowed, rem, reset, retry, state, ttl, known = 0, 0, 0, 0, false, 0, false
