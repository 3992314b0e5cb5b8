-- throttlekit: note the fixed-window ids in use, so reset() finds their string keys without
-- KEYS/SCAN. KEYS[1]: a zset of ids scored by the time (ms since the epoch, the writing
-- host's clock) until which a key of that id may live. ARGV: now (ms), then score, id
-- pairs. A score only rises (hosts' clocks differ); ids an hour past their time are dropped
-- and the zset expires an hour after its last id, on Redis's clock (relative to now), so a
-- host whose clock is off by less than an hour neither drops other hosts' ids nor its own.
local R = KEYS[1]
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', R, '-inf', now - 3600000)
for i = 2, #ARGV, 2 do
  local old = redis.call('ZSCORE', R, ARGV[i + 1])
  if not old or tonumber(old) < tonumber(ARGV[i]) then
    redis.call('ZADD', R, ARGV[i], ARGV[i + 1])
  end
end
local top = redis.call('ZRANGE', R, -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', R, math.max(1, tonumber(top[2]) - now + 3600000))
return 1
