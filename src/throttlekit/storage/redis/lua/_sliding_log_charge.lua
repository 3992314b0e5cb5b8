-- The sliding log's charge (see _sliding_log.lua): add cost at now to the list, the total
-- (another check of the same batch may have charged it) and extend both TTLs. A number for
-- state: the clock stepped back by |state| us: the entries move back first (and state < 0,
-- a refusal: only that).
if state ~= true then
  local d = state
  if d < 0 then d = -d end
  local all = call('LRANGE', aux, 0, -1)
  for j = 1, #all do
    local x = all[j]
    local sp = find(x, ' ', 1, true)
    call('LSET', aux, j - 1, format('%.0f %s', tonumber(sub(x, 1, sp - 1)) - d, sub(x, sp + 1)))
  end
end
if state == true or state > 0 then
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
end
