-- The token bucket's time to drain a debt (after --#include arith).
local function drain(W, R, p, limit)  -- ceil((W * p + R) / limit)
  local q, r = muldiv(W, p, limit)
  return q + idiv(r + R + limit - 1, limit)
end
