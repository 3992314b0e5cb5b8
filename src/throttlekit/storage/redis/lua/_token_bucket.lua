-- See _fixed_window.lua for the shape of a strategy's block (needs --#include drain).
-- The debt (tokens in use x period) is kept as W * p + R, 0 <= R < p, so that it stays
-- exact for every rate (the product itself may pass 2^53).
--#include state3 n1=last n2=W n3=R
local el = 0  -- time since the last charge
if v then el = now - last else W, R = 0, 0 end
if el > 0 then
  if el >= drain(W, R, p, limit) then
    W, R = 0, 0
  else
    local A, B = muldiv(el, limit, p)
    W, R = W - A, R - B
    if R < 0 then R = R + p; W = W - 1 end
    if W < 0 then W, R = 0, 0 end
  end
elseif el < 0 then
  local A, B = muldiv(-el, limit, p)
  W, R = W + A, R + B
  if R >= p then R = R - p; W = W + 1 end
end
local part = 0
if R > 0 then part = 1 end
local NW = W + cost
if cost <= cap and (NW < cap or (NW == cap and R == 0)) then
  allowed, rem, reset = 1, cap - NW - part, drain(NW, R, p, limit)
  if cost > 0 then state, ttl, known = format('%.0f %.0f %.0f', now, NW, R), reset, v end
else
  rem, reset, retry = cap - W - part, drain(W, R, p, limit), -1
  if rem < 0 then rem = 0 end  -- a debt over a lowered capacity (a plan, shield mode)
  if cost <= cap then retry = drain(NW - cap, R, p, limit) end
end
