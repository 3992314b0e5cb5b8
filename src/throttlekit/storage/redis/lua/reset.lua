-- throttlekit: forget every rate-limit state of the key families KEYS (no KEYS/SCAN: each
-- family is one hash whose fields name its algorithms; sliding logs live beside it).
for i = 1, #KEYS do
  local H = KEYS[i]
  local fields = redis.call('HKEYS', H)
  for j = 1, #fields do redis.call('DEL', H .. ':l:' .. fields[j]) end
  redis.call('DEL', H)
end
return #KEYS
