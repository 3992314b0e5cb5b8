-- throttlekit: one fixed_window check with the caller's clock, the common case in the fewest
-- commands. The string key W (P{k}:w:<alg.id>) holds base + count, where base is
-- (window mod 2^19) x 2^33 (counts stay below 2^33, the sum below 2^53: exact in Lua), so
-- an allowed check in a window already started is one INCRBY; a new window overwrites the
-- value with its TTL (SET .. PX). The caller computes the window, base and TTL from its own
-- clock and decides from the count returned. Every argument costs Redis time on every call:
-- limit and base travel as one number (base's low 33 bits are free), the TTL last.
-- KEYS[1]: W; then the request's block keys, if it has any (looked up with one EXISTS).
-- ARGV: cost (-1: only read the count), base + limit, TTL (ms).
-- Returns: read: the count; charged: the new count (> 0, allowed), or minus the count
--          before (< 0, refused: nothing stays charged); false when a block key exists
--          (nothing charged: the caller asks the batch script, which reads the entries).
-- A later window's count (less than 2^18 windows ahead, mod 2^19: the clock stepped back)
-- carries into this window, stored by a charge or a refusal (see _algorithms.FixedWindow).
-- (ahead: how many windows the value's is ahead of this one, mod 2^19)
local W, cost, m = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
if #KEYS > 1 and redis.call('EXISTS', unpack(KEYS, 2)) > 0 then return false end
local limit = m % 8589934592
local base = m - limit
if cost < 0 then
  local v = tonumber(redis.call('GET', W) or '') or -1
  if v >= base and v - base < 8589934592 then return v - base end
  local ahead = math.floor((v - base) / 8589934592) % 524288
  if v >= 0 and ahead > 0 and ahead < 262144 then return (v - base) % 8589934592 end
  return 0
end
local v = redis.call('INCRBY', W, ARGV[1])
local c = v - base
if c > 0 and c < 8589934592 and v ~= cost then  -- the window's count, cost added
  if c > limit then
    redis.call('DECRBY', W, ARGV[1])  -- refused: give it back (the window started: a TTL)
    return cost - c
  end
  return c
end
if v ~= cost then
  local ahead = math.floor((c - cost) / 8589934592) % 524288
  if ahead > 0 and ahead < 262144 then  -- a later window's: the clock stepped back
    c = (c - cost) % 8589934592 + cost
    if c > limit then
      redis.call('SET', W, base + c - cost, 'PX', ARGV[3])
      return cost - c
    end
    redis.call('SET', W, base + c, 'PX', ARGV[3])
    return c
  end
end
-- a new window (W held an earlier window's count, or nothing): its count is cost (<= limit)
redis.call('SET', W, base + cost, 'PX', ARGV[3])  -- (a Lua number below 2^53: exact)
return cost
