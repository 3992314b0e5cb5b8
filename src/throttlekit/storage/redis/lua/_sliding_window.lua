-- See _fixed_window.lua for the shape of a strategy's block (needs --#include arith).
--#include floordiv q=win a=now b=p
--#include state3 n1=w n2=wcur n3=wprev
local cur, prev, at = 0, 0, now
if w == win then
  cur, prev = wcur, wprev
elseif w == win - 1 then
  prev = wcur
elseif w and w > win then
  -- a later window's, starting at most CLOCK_SKEW_US (_decision.py) from now (the next,
  -- or further when the period is shorter): another host's clock is ahead; decided as at
  -- the window's start, the waits counted from now. Else the clock stepped back: the counts
  -- carry into now's windows, stored by a charge or a refusal (see _algorithms.SlidingWindow)
  cur, prev = wcur, wprev
  if w * p - now <= 1000000 then win, at = w, w * p end
end
local left = p - (at - win * p)
-- prev * left + cur * p <= limit * p, divided by p: w = ceil(prev * left / p)
local wq, wr = muldiv(prev, left, p)
if wr > 0 then wq = wq + 1 end
local k = limit - cur - cost
if k >= 0 and wq <= k then
  allowed, rem = 1, k - wq
  if cur + cost > 0 then reset = (win + 2) * p - at elseif prev > 0 then reset = left end
  if cost > 0 then
    state, ttl, known = format('%.0f %.0f %.0f', win, cur + cost, prev), (win + 2) * p - now, v
    if w == win then ttl = 0 end  -- charged before in this window: H's TTL covers it
  end
else
  if cost > limit then
    retry = -1
  elseif k >= 0 then
    retry = (win + 1) * p - muldiv(k, p, prev) - at
  else
    retry = (win + 2) * p - muldiv(limit - cost, p, cur) - at
  end
  rem = limit - cur - wq
  if rem < 0 then rem = 0 end
  if cur > 0 then reset = (win + 2) * p - at elseif prev > 0 then reset = left end
  if w and w > win and cost > 0 then
    state, ttl, known = format('%.0f %.0f %.0f', win, cur, prev), (win + 2) * p - now, v
  end
end
if at > now then
  if reset > 0 then reset = reset + at - now end
  if retry > 0 then retry = retry + at - now end
end
