-- Exact integer arithmetic for Lua's doubles (after --#include common).
local function idiv(a, b)  -- floor(a / b), exact for integers below 2^53
  local q = floor(a / b)
  local r = a - q * b
  if r < 0 then q = q - 1 elseif r >= b then q = q + 1 end
  return q
end

local function muldiv(a, b, c)  -- floor(a * b / c) and the remainder, exact beyond 2^53 too
  local x = a * b
  if x < 9007199254740992 then
    local q = idiv(x, c)
    return q, x - q * c
  end
  local bq = idiv(b, c)
  local br = b - bq * c
  local q, r, hi, rest = 0, 0, 1, a
  while hi * 2 <= rest do hi = hi * 2 end
  while hi >= 1 do  -- binary long multiplication of a * br, reduced modulo c
    q = q * 2
    r = r * 2
    if r >= c then r = r - c; q = q + 1 end
    if rest >= hi then
      rest = rest - hi
      r = r + br
      if r >= c then r = r - c; q = q + 1 end
    end
    hi = hi / 2
  end
  return a * bq + q, r
end
