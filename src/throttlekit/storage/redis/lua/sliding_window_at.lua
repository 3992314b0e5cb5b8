-- throttlekit: one sliding_window check on the caller's clock (the storage's default clock):
-- the block of _sliding_window.lua, answering the state it found ("window cur prev", or
-- nil), from which the caller computes the Decision (see token_bucket_at.lua).
--#include at
--#include arith
--#include sliding_window
if state then
--#include set_state
end
return v
