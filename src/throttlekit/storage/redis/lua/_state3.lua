--#params n1 n2 n3
-- The field's value v (its state "n1 n2 n3", or nil) and its three numbers.
local v = call('HGET', H, field)
local n1, n2, n3
if v then
  local s1 = find(v, ' ', 1, true)
  local s2 = find(v, ' ', s1 + 1, true)
  n1 = tonumber(sub(v, 1, s1 - 1))
  n2, n3 = tonumber(sub(v, s1 + 1, s2 - 1)), tonumber(sub(v, s2 + 1))
end
