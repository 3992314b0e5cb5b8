-- throttlekit: note the fixed-window ids in use, so reset() finds their string keys without
-- KEYS/SCAN. KEYS[1]: a zset of ids scored by the time (ms since the epoch) until which a
-- key of that id may live. ARGV: now (ms), then score, id pairs. Ids past their time are
-- dropped, and the zset expires with its last id.
local R = KEYS[1]
redis.call('ZREMRANGEBYSCORE', R, '-inf', ARGV[1])
redis.call('ZADD', R, unpack(ARGV, 2))
local top = redis.call('ZRANGE', R, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', R, top[2])
return 1
