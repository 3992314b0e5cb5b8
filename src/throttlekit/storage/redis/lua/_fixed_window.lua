-- Each strategy is one function of (H, aux, field, limit, p, cap, cost): H the key family
-- hash, aux the sliding log's list (else H), p the period in microseconds, cap the token
-- bucket's capacity. It returns allowed (1/0), remaining, reset_us, retry_us (-1 = never)
-- and, when the check allows a positive cost, the function that charges it.
local function fixed_window(H, aux, field, limit, p, cap, cost)
  local win = idiv(now, p)
  local count = 0
  local v = call('HGET', H, field)
  if v then
    local w, c = parse(v)
    if w == win then count = c end
  end
  local left = (win + 1) * p - now
  if count + cost <= limit then
    local reset = 0
    if count + cost > 0 then reset = left end
    local write = cost > 0 and function()
      call('HSET', H, field, fmt(win) .. ' ' .. fmt(count + cost))
      expire(H, left, v)
    end
    return 1, limit - count - cost, reset, 0, write
  end
  local rem, reset, retry = 0, 0, left
  if cost > limit then retry = -1 end
  if count > 0 then reset = left end
  if count < limit then rem = limit - count end
  return 0, rem, reset, retry
end
