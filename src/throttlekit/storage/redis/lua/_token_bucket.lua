-- See _fixed_window.lua for the shape of a strategy's block (needs --#include drain).
-- The debt (tokens in use x period) is kept as W * p + R, 0 <= R < p, so that it stays
-- exact for every rate (the product itself may pass 2^53).
local W, R = 0, 0
local v = call('HGET', H, field)
if v then  -- "last W R"
  local s1 = find(v, ' ', 1, true)
  local s2 = find(v, ' ', s1 + 1, true)
  local last = tonumber(sub(v, 1, s1 - 1))
  W, R = tonumber(sub(v, s1 + 1, s2 - 1)), tonumber(sub(v, s2 + 1))
  local el = now - last
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
end
local part = 0
if R > 0 then part = 1 end
local NW = W + cost
if cost <= cap and (NW < cap or (NW == cap and R == 0)) then
  allowed, rem, reset = 1, cap - NW - part, drain(NW, R, p, limit)
  if cost > 0 then state, ttl, known = format('%.0f %.0f %.0f', now, NW, R), reset, v end
else
  rem, reset, retry = cap - W - part, drain(W, R, p, limit), -1
  if cost <= cap then retry = drain(NW - cap, R, p, limit) end
end
