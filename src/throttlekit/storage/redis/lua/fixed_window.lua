-- throttlekit: one fixed_window check (see _single.lua; the strategy: _fixed_window.lua).
--#include single
--#include fixed_window
if state and charge then
--#include set_state
end
return format('%.0f %.0f %.0f %.0f', allowed, rem, reset, retry)
