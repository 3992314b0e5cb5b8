-- throttlekit: forget every rate-limit state of the key families KEYS (no KEYS/SCAN: each
-- family is one hash whose fields name its algorithms; sliding logs live beside it; fixed
-- windows are string keys beside it named by the ids in ARGV, the fixed-window ids in use:
-- see RedisStorage.reset).
for i = 1, #KEYS do
  local H = KEYS[i]
  local fields = redis.call('HKEYS', H)
  for j = 1, #fields do redis.call('DEL', H .. ':l:' .. fields[j]) end
  redis.call('DEL', H)
  for j = 1, #ARGV do redis.call('DEL', H .. ':w:' .. ARGV[j]) end
end
return #KEYS
