-- The fixed window's charge (see _fixed_window.lua): add cost to the window's count, or
-- start the window (its value written whole) and extend H's TTL.
if state == true then
  call('HINCRBY', H, field, format('%.0f', cost))
else
  call('HSET', H, field, state)
--#include expire key=H known=known
end
