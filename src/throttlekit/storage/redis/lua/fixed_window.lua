-- throttlekit: one fixed_window check with the caller's clock, the common case in the fewest
-- commands. The string key W (P{k}:w:<alg.id>) holds base + limit + count, where base is
-- (window mod 2^19) x 2^34 (limit and counts stay below 2^33, the sum below 2^53: exact in
-- Lua), so an allowed check in a window already started is one INCRBY; a new window
-- overwrites the value with its TTL (SET .. PX, both sent as strings: Redis formatting a
-- Lua number costs more than the command). The caller computes the window, its value and
-- TTL from its own clock and decides from the count returned. Every argument costs Redis
-- time on every call: two in the common case (a cost of 1), each used as sent.
-- KEYS[1]: W; then the request's block keys, if it has any (looked up with one EXISTS).
-- ARGV: n = base + limit + cost (read: base + limit), TTL (ms; 'r': only read the count),
--       cost when it is not 1 (INCR, else INCRBY).
-- Returns: read: the count; charged: the new count (> 0, allowed), or minus the count
--          before (< 0, refused: nothing stays charged); false when a block key exists
--          (nothing charged: the caller asks the batch script, which reads the entries).
-- A later window's count (less than 2^18 windows ahead, mod 2^19: the clock stepped back)
-- carries into this window, stored by a charge or a refusal (see _algorithms.FixedWindow).
-- (ahead: how many windows the value's is ahead of this one, mod 2^19)
local W, m, ttl = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local b = KEYS[2]
if b and redis.call('EXISTS', b, unpack(KEYS, 3)) > 0 then return false end
if ttl == 'r' then
  local c = (tonumber(redis.call('GET', W) or '') or -1) - m
  if c >= 0 and c < 17179869184 then return c end
  local ahead = math.floor(c / 17179869184) % 524288
  if c + m >= 0 and ahead > 0 and ahead < 262144 then return c % 17179869184 end
  return 0
end
local inc, cost, c = ARGV[3], 1, 0
if inc then
  cost = tonumber(inc)
  c = redis.call('INCRBY', W, inc)
else
  c = redis.call('INCR', W)
end
m = m - cost  -- base + limit
c = c - m
if c > 0 and c < 17179869184 then  -- the window's count, cost added
  if c > m % 17179869184 then  -- refused: give it back (the window started: a TTL)
    if inc then redis.call('DECRBY', W, inc) else redis.call('DECR', W) end
    return cost - c
  end
  return c
end
local ahead = math.floor((c - cost) / 17179869184) % 524288
if c + m ~= cost and ahead > 0 and ahead < 262144 then  -- a later window's: stepped back
  c = (c - cost) % 17179869184 + cost
  if c > m % 17179869184 then
    redis.call('SET', W, string.format('%.0f', m + c - cost), 'PX', ttl)
    return cost - c
  end
  redis.call('SET', W, string.format('%.0f', m + c), 'PX', ttl)
  return c
end
-- a new window (W held an earlier window's count, or nothing): its count is cost (<= limit)
redis.call('SET', W, ARGV[1], 'PX', ttl)
return cost
