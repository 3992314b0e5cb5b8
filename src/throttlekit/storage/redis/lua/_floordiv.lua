--#params q a b
local q = floor(a / b)  -- exact floor(a / b) for integers below 2^53
do
  local r = a - q * b
  if r < 0 then q = q - 1 elseif r >= b then q = q + 1 end
end
