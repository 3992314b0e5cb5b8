-- Concurrency leases: KEYS are zsets of lease ids scored by expiry (microseconds).
-- ARGV[1] op: "acquire" | "release" | "count"
-- acquire: ARGV[2] now_us ('' = server TIME), ARGV[3] lease id, ARGV[4] timeout_us,
--          ARGV[5] slack_ms, ARGV[6..] the limit of each key.
--          Returns 0 when every slot was taken, else the 1-based index of the first full key.
-- release: ARGV[3] lease id.   count: ARGV[2] now_us; returns the live leases of KEYS[1].
local op = ARGV[1]
if op == 'release' then
  for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[3]) end
  return 0
end
--#include clock now_at=2 slack_at=5
if op == 'count' then
  return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', now), '+inf')
end
local timeout = tonumber(ARGV[4])
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%d', now))
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[5 + i]) then return i end
end
local expiry = string.format('%d', now + timeout)
local ttl_ms = math.ceil(timeout / 1000) + tonumber(ARGV[5])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], expiry, ARGV[3])
  if redis.call('PTTL', KEYS[i]) < ttl_ms then redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
return 0
