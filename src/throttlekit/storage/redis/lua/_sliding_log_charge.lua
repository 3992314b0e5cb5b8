-- The sliding log's charge (see _sliding_log.lua): add cost at now to the list, the total
-- (another check of the same batch may have charged it) and extend both TTLs.
local e = call('LINDEX', aux, -1)
local sp = e and find(e, ' ', 1, true)
if e and tonumber(sub(e, 1, sp - 1)) == now then
  call('LSET', aux, -1, format('%.0f %.0f', now, tonumber(sub(e, sp + 1)) + cost))
else
  call('RPUSH', aux, format('%.0f %.0f', now, cost))
end
call('HINCRBY', H, field, format('%.0f', cost))
if e then
--#include expire key=aux known=e
else  -- RPUSH made the list: it has no TTL yet
  call('PEXPIRE', aux, floor((ttl + 999) / 1000) + slack)
end
--#include expire key=H known=known
