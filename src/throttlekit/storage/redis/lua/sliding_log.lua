-- throttlekit: one sliding_log check (see _single.lua; the strategy: _sliding_log.lua).
--#include single
local aux = KEYS[2]
--#include sliding_log
if state and charge then
--#include sliding_log_charge
end
return format('%.0f %.0f %.0f %.0f', allowed, rem, reset, retry)
