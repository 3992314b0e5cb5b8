-- throttlekit: move the chain of bans of one key on by one ban (Escalation.step in
-- _escalation.py, the same arithmetic in doubles). KEYS[1]: the key's family hash, whose
-- field ARGV[3] (the escalation's id) holds "level until". ARGV: now ('' = server TIME),
-- ttl slack (ms, only with a client-given now), id, bantime_us, factor, max_ban_us, steps,
-- jitter, draw, forget_us. Returns {level, the ban's length in microseconds}.
--#include clock now_at=1 slack_at=2
local H, field = KEYS[1], ARGV[3]
local level = 1
local old = redis.call('HGET', H, field)
if old then
  local l, u = string.match(old, '^(%d+) (%d+)$')
  if l and now < tonumber(u) then
    level = math.min(tonumber(l) + 1, tonumber(ARGV[7]))
  end
end
local length = math.floor(math.min(tonumber(ARGV[4]) * tonumber(ARGV[5]) ^ (level - 1),
                                   tonumber(ARGV[6])))
local ttl = math.floor(length * (1.0 - tonumber(ARGV[8]) * tonumber(ARGV[9])))
local till = now + ttl + tonumber(ARGV[10])
redis.call('HSET', H, field, string.format('%d %.0f', level, till))
-- the family's TTL covers the chain (never shortened: it holds the rule counters too)
local ms = math.floor((till - now + 999) / 1000) + slack
if redis.call('PTTL', H) < ms then redis.call('PEXPIRE', H, ms) end
return {level, ttl}
