-- Included by the single-check scripts (see --#include in redis.py): the clock, the TTL mode
-- and the arguments every one of them shares.
local OUT = '%.0f %.0f %.0f %.0f'
local call, floor = redis.call, math.floor
-- PEXPIRE .. GT (Redis 7+) extends a TTL, never shortens it, in one call: used when a key is
-- known to exist, hence to have a TTL (every write sets one); else PTTL, PEXPIRE.
local GT = (redis.REDIS_VERSION_NUM or 0) >= 0x070000
local now, slack = ARGV[1], 0
if now == '' then
  local t = call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now, slack = tonumber(now), tonumber(ARGV[3])
end
local cost, limit, p = tonumber(ARGV[2]), tonumber(ARGV[5]), tonumber(ARGV[6])
local charge = cost >= 0
if not charge then cost = -1 - cost end
