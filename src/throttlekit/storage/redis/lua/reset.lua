-- throttlekit: forget every rate-limit state of the key families KEYS (no KEYS/SCAN: each
-- family is one hash whose fields name its algorithms; sliding logs live beside it; fixed
-- windows are string keys beside it named by the ids in ARGV[2..], the fixed-window ids in
-- use: see RedisStorage.reset). ARGV[1]: '' or, on one server (not a Cluster: other slots),
-- the seed of the generation of admin changes, the last of KEYS then, moved on.
local n = #KEYS
if ARGV[1] ~= '' then n = n - 1 end
for i = 1, n do
  local H = KEYS[i]
  local fields = redis.call('HKEYS', H)
  for j = 1, #fields do redis.call('DEL', H .. ':l:' .. fields[j]) end
  redis.call('DEL', H)
  for j = 2, #ARGV do redis.call('DEL', H .. ':w:' .. ARGV[j]) end
end
if n < #KEYS then
  redis.call('SET', KEYS[#KEYS], ARGV[1], 'NX')
  redis.call('INCR', KEYS[#KEYS])
end
