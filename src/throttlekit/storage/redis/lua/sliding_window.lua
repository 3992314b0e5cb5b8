-- throttlekit: one sliding_window check (see _single.lua; the strategy: _sliding_window.lua).
--#include single
--#include arith
--#include sliding_window
if state and charge then
--#include set_state
end
return format('%.0f %.0f %.0f %.0f', allowed, rem, reset, retry)
