-- throttlekit: write one dynamic-blocklist entry.
-- KEYS[1]: the entry key. ARGV: now ('' = server TIME), ttl_us ('' = no expiry), reason,
-- ttl slack (ms, only with a client-given now). Returns the expiry ('inf' or microseconds).
local now, slack
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  slack = 0
else
  now = tonumber(ARGV[1])
  slack = tonumber(ARGV[4])
end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], 'inf ' .. ARGV[3])
  return 'inf'
end
local ttl = tonumber(ARGV[2])
local exp = string.format('%.0f', now + ttl)
redis.call('SET', KEYS[1], exp .. ' ' .. ARGV[3], 'PX', math.floor((ttl + 999) / 1000) + slack)
return exp
