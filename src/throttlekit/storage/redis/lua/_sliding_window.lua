-- See _fixed_window.lua for the shape of a strategy's function.
local function sliding_window(H, aux, field, limit, p, cap, cost)
  local win = idiv(now, p)
  local cur, prev = 0, 0
  local v = call('HGET', H, field)
  if v then  -- "window current previous"
    local sp1 = string.find(v, ' ', 1, true)
    local w = tonumber(string.sub(v, 1, sp1 - 1))
    local c, pr = parse(string.sub(v, sp1 + 1))
    if w == win then cur, prev = c, pr elseif w == win - 1 then prev = c end
  end
  local left = p - (now - win * p)
  -- prev * left + cur * p <= limit * p, divided by p: w = ceil(prev * left / p)
  local wq, wr = muldiv(prev, left, p)
  if wr > 0 then wq = wq + 1 end
  local k = limit - cur - cost
  local reset = 0
  if k >= 0 and wq <= k then
    if cur + cost > 0 then reset = (win + 2) * p - now elseif prev > 0 then reset = left end
    if cost == 0 then return 1, k - wq, reset, 0 end
    return 1, k - wq, reset, 0,
      set_state, string.format('%.0f %.0f %.0f', win, cur + cost, prev), (win + 2) * p - now, v
  end
  local retry
  if cost > limit then
    retry = -1
  elseif k >= 0 then
    retry = (win + 1) * p - muldiv(k, p, prev) - now
  else
    retry = (win + 2) * p - muldiv(limit - cost, p, cur) - now
  end
  local rem = limit - cur - wq
  if rem < 0 then rem = 0 end
  if cur > 0 then reset = (win + 2) * p - now elseif prev > 0 then reset = left end
  return 0, rem, reset, retry
end
