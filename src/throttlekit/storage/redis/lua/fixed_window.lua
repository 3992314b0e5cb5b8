-- throttlekit: one fixed_window check with the caller's clock, the common case in the fewest
-- commands. The string key W (P{k}:w:<alg.id>) holds base + count, where base is
-- (window mod 2^19) x 2^33 (counts stay below 2^33, the sum below 2^53: exact in Lua), so
-- an allowed check in a window already started is one INCR; a new window overwrites the
-- value with its TTL (SET .. PX, both sent as strings: Redis formatting a Lua number costs
-- about as much as the command). The value holds no limit: a plan's limit may read the
-- same count (Algorithm.rerated). The caller computes the window, its value and TTL from
-- its own clock and decides from the count returned. Every argument costs Redis time on
-- every call: three in the common case (a cost of 1), each used as sent.
-- KEYS[1]: W; then the request's block keys, if it has any (looked up with one EXISTS).
-- ARGV: n = base + cost, limit, TTL (ms), cost when it is not 1 (INCR, else INCRBY);
--       to only read the count: base, 'r'.
-- Returns: read: the count; charged: the new count (> 0, allowed), or minus the count
--          before (< 0, refused: nothing stays charged); false when a block key exists
--          (nothing charged: the caller asks the batch script, which reads the entries).
-- The next window's count, when the caller says its window ends within CLOCK_SKEW_US
-- (_decision.py: the TTL sent negative, or 'n' to read): another host's clock is ahead; it
-- is counted in place and answered plus 2^34 (read, allowed) or minus 2^34 (refused): the
-- caller decides as at that window's start. Else a later window's count (less than 2^18
-- windows ahead, mod 2^19: the clock stepped back) carries into this window, stored by a
-- charge or a refusal (see _algorithms.FixedWindow).
-- (ahead: how many windows the value's is ahead of this one, mod 2^19)
local W, base, limit = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local b = KEYS[2]
if b and redis.call('EXISTS', b, unpack(KEYS, 3)) > 0 then return false end
if limit == 'r' or limit == 'n' then
  local v = tonumber(redis.call('GET', W) or '') or -1
  if v >= base and v - base < 8589934592 then return v - base end
  local ahead = math.floor((v - base) / 8589934592) % 524288
  if v >= 0 and ahead == 1 and limit == 'n' then return (v - base) % 8589934592 + 17179869184 end
  if v >= 0 and ahead > 0 and ahead < 262144 then return (v - base) % 8589934592 end
  return 0
end
local inc, cost, v = ARGV[4], 1, 0
if inc then
  cost = tonumber(inc)
  v = redis.call('INCRBY', W, inc)
else
  v = redis.call('INCR', W)
end
base = base - cost
local c = v - base
if c > 0 and c < 8589934592 and v ~= cost then  -- the window's count, cost added
  if c > tonumber(limit) then  -- refused: give it back (the window started: a TTL)
    if inc then redis.call('DECRBY', W, inc) else redis.call('DECR', W) end
    return cost - c
  end
  return c
end
local ttl = ARGV[3]
local near = string.byte(ttl) == 45  -- ('-')
if near then ttl = string.sub(ttl, 2) end
if v ~= cost then
  local ahead = math.floor((c - cost) / 8589934592) % 524288
  if ahead == 1 and near then  -- the next window's: another host's clock ahead
    c = (c - cost) % 8589934592 + cost
    if c > tonumber(limit) then
      if inc then redis.call('DECRBY', W, inc) else redis.call('DECR', W) end
      return cost - c - 17179869184
    end
    return c + 17179869184
  end
  if ahead > 0 and ahead < 262144 then  -- a later window's: the clock stepped back
    c = (c - cost) % 8589934592 + cost
    if c > tonumber(limit) then
      redis.call('SET', W, string.format('%.0f', base + c - cost), 'PX', ttl)
      return cost - c
    end
    redis.call('SET', W, string.format('%.0f', base + c), 'PX', ttl)
    return c
  end
end
-- a new window (W held an earlier window's count, or nothing): its count is cost (<= limit)
redis.call('SET', W, ARGV[1], 'PX', ttl)
return cost
