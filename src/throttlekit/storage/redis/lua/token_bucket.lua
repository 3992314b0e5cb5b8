-- throttlekit: one token_bucket check (see _single.lua; the strategy: _token_bucket.lua).
--#include single
local cap = tonumber(ARGV[7])
--#include arith
--#include drain
--#include token_bucket
if state and charge then
--#include set_state
end
return format('%.0f %.0f %.0f %.0f', allowed, rem, reset, retry)
