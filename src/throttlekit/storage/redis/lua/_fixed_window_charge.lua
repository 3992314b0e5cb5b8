-- The fixed window's charge (see _fixed_window.lua): add cost to the window's field; a new
-- window drops the last one's field, is indexed under field and extends H's TTL.
call('HINCRBY', H, state, format('%.0f', cost))
if not known then
  local old = call('HGET', H, field)
  if old then call('HDEL', H, field .. '|' .. old) end
  call('HSET', H, field, sub(state, #field + 2))
--#include expire key=H known=old
end
