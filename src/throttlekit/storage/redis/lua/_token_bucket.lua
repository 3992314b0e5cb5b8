-- See _fixed_window.lua for the shape of a strategy's function.
local function drain(W, R, p, limit)  -- ceil((W * p + R) / limit)
  local q, r = muldiv(W, p, limit)
  return q + idiv(r + R + limit - 1, limit)
end

local function token_bucket(H, aux, field, limit, p, cap, cost)
  -- The debt (tokens in use x period) is kept as W * p + R, 0 <= R < p, so that it stays
  -- exact for every rate (the product itself may pass 2^53).
  local W, R = 0, 0
  local v = call('HGET', H, field)
  if v then  -- "last W R"
    local sp1 = string.find(v, ' ', 1, true)
    local last = tonumber(string.sub(v, 1, sp1 - 1))
    W, R = parse(string.sub(v, sp1 + 1))
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
  if cost > cap then return 0, cap - W - part, drain(W, R, p, limit), -1 end
  local NW = W + cost
  if NW < cap or (NW == cap and R == 0) then
    local reset = drain(NW, R, p, limit)
    if cost == 0 then return 1, cap - NW - part, reset, 0 end
    return 1, cap - NW - part, reset, 0,
      set_state, string.format('%.0f %.0f %.0f', now, NW, R), reset, v
  end
  return 0, cap - W - part, drain(W, R, p, limit), drain(NW - cap, R, p, limit)
end
