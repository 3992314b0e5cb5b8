-- See _fixed_window.lua for the shape of a strategy's function. The list aux holds
-- "time cost" entries, oldest first; H's field holds their total.
local function log_charge(H, aux, field, cost, _, ttl_us, known)
  local e = call('LINDEX', aux, -1)
  local t, c
  if e then t, c = parse(e) end
  if t == now then
    call('LSET', aux, -1, fmt(now) .. ' ' .. fmt(c + cost))
  else
    call('RPUSH', aux, fmt(now) .. ' ' .. fmt(cost))
  end
  -- the total now (another check of the same batch may have charged it)
  call('HINCRBY', H, field, fmt(cost))
  expire(aux, ttl_us, e)
  expire(H, ttl_us, known)
end

local function last_time(aux)  -- of the newest entry
  return (parse(call('LINDEX', aux, -1)))
end

local function sliding_log(H, aux, field, limit, p, cap, cost)
  local known = call('HGET', H, field)  -- H exists
  local total = tonumber(known or '0')
  local horizon = now - p
  local trimmed = false
  while total > 0 do
    local e = call('LINDEX', aux, 0)
    if not e then total = 0; trimmed = true; break end
    local t, c = parse(e)
    if t > horizon then break end
    call('LPOP', aux)
    total = total - c
    trimmed = true
  end
  if trimmed then call('HSET', H, field, fmt(total)) end
  if total + cost <= limit then
    if cost == 0 then
      local reset = 0
      if total > 0 then reset = last_time(aux) + p - now end
      return 1, limit - total, reset, 0
    end
    return 1, limit - total - cost, p, 0, log_charge, false, p, known
  end
  local retry, reset, rem = -1, 0, 0
  if cost <= limit then
    local need, freed, at, start = total + cost - limit, 0, now, 0
    while true do
      local chunk = call('LRANGE', aux, start, start + 63)
      if #chunk == 0 then break end
      local done = false
      for j = 1, #chunk do
        local t, c = parse(chunk[j])
        freed = freed + c
        if freed >= need then at = t + p; done = true; break end
      end
      if done then break end
      start = start + 64
    end
    retry = at - now
  end
  if total > 0 then reset = last_time(aux) + p - now end
  if total < limit then rem = limit - total end
  return 0, rem, reset, retry
end
