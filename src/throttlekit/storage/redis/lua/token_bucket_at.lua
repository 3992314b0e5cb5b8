-- throttlekit: one token_bucket check on the caller's clock (the storage's default clock):
-- the block of _token_bucket.lua, answering the state it found ("last W R", or nil), from
-- which the caller computes the Decision with the same arithmetic. Lua turns numbers into
-- strings slowly (about 0.35 us each): an answer of four numbers cost 1.5 us of Redis CPU.
--#include at
--#include arith
--#include drain
--#include token_bucket
if state then
--#include set_state
end
return v
