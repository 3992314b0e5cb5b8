-- throttlekit: one token_bucket check of a whole-microsecond emission interval (see
-- _gcra.lua) on the caller's clock, answering the state it found (see token_bucket_at.lua).
--#include at
--#include gcra
if state then
--#include set_state
end
return v
