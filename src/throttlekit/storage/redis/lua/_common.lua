-- What the strategies' parts use (then --#include clock).
local call, floor = redis.call, math.floor
local find, sub, format = string.find, string.sub, string.format
-- PEXPIRE .. GT (Redis 7+) extends a TTL, never shortens it, in one call: used when a key is
-- known to exist, hence to have a TTL (every write sets one); else PTTL, PEXPIRE.
local GT = (redis.REDIS_VERSION_NUM or 0) >= 0x070000
