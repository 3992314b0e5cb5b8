-- See _fixed_window.lua for the shape of a strategy's block. The list aux holds "time cost"
-- entries, oldest first; H's field holds their total.
local v = call('HGET', H, field)  -- H exists
local total = tonumber(v or '0')
-- t: now, or the latest entry when it is later (the clock stepped back): decided then, and
-- the entries moved back by the step (shift), stored by a charge or a refusal (see
-- _algorithms.SlidingLog and _sliding_log_charge.lua)
local t, shift = now, 0
if total > 0 then
  local e = call('LINDEX', aux, -1)
  local at = e and tonumber(sub(e, 1, find(e, ' ', 1, true) - 1))
  if at and at > now then t, shift = at, at - now end
end
local horizon = t - p
local trimmed = false
while total > 0 do
  local e = call('LINDEX', aux, 0)
  if not e then total = 0; trimmed = true; break end
  local sp = find(e, ' ', 1, true)
  if tonumber(sub(e, 1, sp - 1)) > horizon then break end
  call('LPOP', aux)
  total = total - tonumber(sub(e, sp + 1))
  trimmed = true
end
if trimmed then call('HSET', H, field, format('%.0f', total)) end
if total + cost <= limit then
  allowed, rem = 1, limit - total - cost
  if cost > 0 then
    reset, state, ttl, known = p, true, p, v
    if shift > 0 then state = shift end
  elseif total > 0 then
    local e = call('LINDEX', aux, -1)
    reset = tonumber(sub(e, 1, find(e, ' ', 1, true) - 1)) + p - t
  end
else
  retry = -1
  if cost <= limit then
    local need, freed, at, start = total + cost - limit, 0, t, 0
    while true do
      local chunk = call('LRANGE', aux, start, start + 63)
      if #chunk == 0 then break end
      local done = false
      for j = 1, #chunk do
        local e = chunk[j]
        local sp = find(e, ' ', 1, true)
        freed = freed + tonumber(sub(e, sp + 1))
        if freed >= need then at = tonumber(sub(e, 1, sp - 1)) + p; done = true; break end
      end
      if done then break end
      start = start + 64
    end
    retry = at - t
  end
  if total > 0 then
    local e = call('LINDEX', aux, -1)
    reset = tonumber(sub(e, 1, find(e, ' ', 1, true) - 1)) + p - t
  end
  if total < limit then rem = limit - total end
  if shift > 0 and cost > 0 then state, ttl, known = -shift, 0, v end
end
