-- throttlekit: the dynamic blocklist's index, so blocked() lists entries without KEYS.
-- KEYS[1]: zset of blocked keys scored by expiry (microseconds, +inf for none);
-- KEYS[2]: hash key -> reason.
-- ARGV: op ('add' | 'del' | 'list'), now ('' = server TIME), ttl slack (ms, only with a
-- client-given now), member, expiry ('inf' or microseconds), reason.
-- 'del' on one server (not a Cluster: other slots) also takes KEYS[3], the member's own
-- entry, deleted here too, and KEYS[4], the generation of admin changes, moved on (ARGV[5]:
-- its seed, should it be missing): one atomic round trip.
-- Expired entries are dropped lazily, a bounded number per call ('list': all of them).
local Z, R = KEYS[1], KEYS[2]
local op = ARGV[1]
--#include clock now_at=2 slack_at=3
local result = 0
if op == 'add' then
  local score = ARGV[5] == 'inf' and '+inf' or ARGV[5]
  redis.call('ZADD', Z, score, ARGV[4])
  redis.call('HSET', R, ARGV[4], ARGV[6])
elseif op == 'del' then
  result = redis.call('ZREM', Z, ARGV[4])
  redis.call('HDEL', R, ARGV[4])
  if KEYS[4] then
    result = result + redis.call('DEL', KEYS[3])
    redis.call('SET', KEYS[4], ARGV[5], 'NX')
    redis.call('INCR', KEYS[4])
  end
end
local limit = op == 'list' and {} or {'LIMIT', 0, 100}
local gone = redis.call('ZRANGEBYSCORE', Z, '-inf', string.format('%.0f', now), unpack(limit))
if #gone > 0 then
  redis.call('ZREM', Z, unpack(gone))
  redis.call('HDEL', R, unpack(gone))
end
local top = redis.call('ZRANGE', Z, -1, -1, 'WITHSCORES')
if #top == 0 then
  redis.call('DEL', Z, R)
elseif top[2] == 'inf' then
  redis.call('PERSIST', Z)
  redis.call('PERSIST', R)
else
  local ms = math.floor((tonumber(top[2]) - now + 999) / 1000) + slack
  redis.call('PEXPIRE', Z, ms)
  redis.call('PEXPIRE', R, ms)
end
if op ~= 'list' then return result end
local live = redis.call('ZRANGE', Z, 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = live[i + 1]
  out[#out + 1] = redis.call('HGET', R, live[i]) or ''
end
return out
