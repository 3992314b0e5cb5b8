-- throttlekit: write one dynamic-blocklist entry.
-- KEYS[1]: the entry key. ARGV: now ('' = server TIME), ttl_us ('' = no expiry), reason,
-- ttl slack (ms, only with a client-given now). Returns the expiry ('inf' or microseconds).
--#include clock now_at=1 slack_at=4
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], 'inf ' .. ARGV[3])
  return 'inf'
end
local ttl = tonumber(ARGV[2])
local exp = string.format('%.0f', now + ttl)
redis.call('SET', KEYS[1], exp .. ' ' .. ARGV[3], 'PX', math.floor((ttl + 999) / 1000) + slack)
return exp
