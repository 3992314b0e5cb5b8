-- Each strategy is one function of (H, aux, field, limit, p, cap, cost): H the key family
-- hash, aux the sliding log's list (else H), p the period in microseconds, cap the token
-- bucket's capacity. It returns allowed (1/0), remaining, reset_us, retry_us (-1 = never)
-- and, when the check allows a positive cost, how to charge it: a function and the three
-- arguments it takes after (H, aux, field, cost). No closure is made per check: scripts
-- run on every request, and closures over a check's locals cost more than the check.
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
    if cost == 0 then return 1, limit - count, reset, 0 end
    return 1, limit - count - cost, reset, 0,
      set_state, string.format('%.0f %.0f', win, count + cost), left, v
  end
  local rem, reset, retry = 0, 0, left
  if cost > limit then retry = -1 end
  if count > 0 then reset = left end
  if count < limit then rem = limit - count end
  return 0, rem, reset, retry
end
