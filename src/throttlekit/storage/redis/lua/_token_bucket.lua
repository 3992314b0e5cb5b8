-- See _fixed_window.lua for the shape of a strategy's block (needs --#include drain).
-- The debt (tokens in use x period) is kept as W * p + R, 0 <= R < p, so that it stays
-- exact for every rate (the product itself may pass 2^53).
--#include state3 n1=last n2=W n3=R
local el, full = 0, 0  -- the time since the last charge; when its bucket is full again
if v then el, full = now - last, last + drain(W, R, p, limit) else W, R = 0, 0 end
local W0, R0 = W, R
if el > 0 then
  if now >= full then
    W, R = 0, 0
  else
    local A, B = muldiv(el, limit, p)
    W, R = W - A, R - B
    if R < 0 then R = R + p; W = W - 1 end
    if W < 0 then W, R = 0, 0 end
  end
elseif el < 0 then
  -- The clock stepped back: the step's time counts as used, but never more than a full
  -- bucket (or the state's own debt, over a lowered capacity); stored by a charge or a
  -- refusal, at now (see _algorithms.TokenBucket._back).
  local A, B = muldiv(-el, limit, p)
  W, R = W + A, R + B
  if R >= p then R = R - p; W = W + 1 end
  if W > cap or (W == cap and R > 0) then
    if W0 > cap or (W0 == cap and R0 > 0) then W, R = W0, R0 else W, R = cap, 0 end
  end
end
local part = 0
if R > 0 then part = 1 end
local NW = W + cost
if cost <= cap and (NW < cap or (NW == cap and R == 0)) then
  allowed, rem, reset = 1, cap - NW - part, drain(NW, R, p, limit)
  if cost > 0 then
    -- H's TTL runs to the end of the period in which the bucket is full again, so that a
    -- charge extends it (a write) only when that moves to a later period
    local q = idiv(now + reset, p)
    state, ttl, known = format('%.0f %.0f %.0f', now, NW, R), (q + 1) * p - now, v
    if v and q <= idiv(full, p) then ttl = 0 end
  end
else
  rem, reset, retry = cap - W - part, drain(W, R, p, limit), -1
  if rem < 0 then rem = 0 end  -- a debt over a lowered capacity (a plan, shield mode)
  if cost <= cap then retry = drain(NW - cap, R, p, limit) end
  if el < 0 and cost > 0 then
    state, ttl, known = format('%.0f %.0f %.0f', now, W, R), reset, v
  end
end
