-- The fixed window's charge (see _fixed_window.lua): add cost to the window's count, or
-- start the window: its value written whole, with the window's TTL.
if state == true then
  call('INCRBY', aux, format('%.0f', cost))
else
  call('SET', aux, state, 'PX', floor((ttl + 999) / 1000) + slack)
end
