-- throttlekit: one fixed_window check with the caller's clock, the common case in the fewest
-- commands. The field <alg.id> of the key family hash H holds base + count, where base is
-- (window mod 2^19) x 2^33 (counts stay below 2^33, the sum below 2^53: exact in Lua), so
-- an allowed check in a window already started is one HINCRBY; a new window overwrites the
-- field (HSET) and extends H's TTL. The caller computes the window, base and TTL from its
-- own clock and decides from the count returned.
-- KEYS[1]: H. ARGV: alg.id, cost (-1: only read the count), limit, TTL (ms), base,
--          base + cost.
-- Returns: read: the count; charged: the new count (> 0, allowed), or minus the count
--          before (< 0, refused: nothing stays charged).
local H, f, cost = KEYS[1], ARGV[1], tonumber(ARGV[2])
local base = tonumber(ARGV[5])
-- A later window's count (less than 2^18 windows ahead, mod 2^19: the clock stepped back)
-- carries into this window, stored by a charge or a refusal (see _algorithms.FixedWindow).
-- (ahead: how many windows the field's is ahead of this one, mod 2^19)
if cost < 0 then
  local v = tonumber(redis.call('HGET', H, f) or '') or -1
  if v >= base and v - base < 8589934592 then return v - base end
  local ahead = math.floor((v - base) / 8589934592) % 524288
  if v >= 0 and ahead > 0 and ahead < 262144 then return (v - base) % 8589934592 end
  return 0
end
local v = redis.pcall('HINCRBY', H, f, cost)  -- (an error: a state of an older layout)
if type(v) ~= 'number' then v = -1 end
local c = v - base
if v == cost or c <= 0 or c >= 8589934592 then  -- a new window (the field was another's)
  local ahead = math.floor((c - cost) / 8589934592) % 524288
  if v ~= cost and v ~= -1 and ahead > 0 and ahead < 262144 then
    c = (c - cost) % 8589934592 + cost  -- a later window's: the clock stepped back
    if c > tonumber(ARGV[3]) then
      redis.call('HSET', H, f, string.format('%.0f', base + c - cost))
      return cost - c
    end
    redis.call('HSET', H, f, string.format('%.0f', base + c))
    return c
  end
  redis.call('HSET', H, f, ARGV[6])
  local ms = tonumber(ARGV[4])
  if v ~= cost and v ~= -1 and (redis.REDIS_VERSION_NUM or 0) >= 0x070000 then  -- H had a TTL
    redis.call('PEXPIRE', H, ms, 'GT')
  elseif redis.call('PTTL', H) < ms then
    redis.call('PEXPIRE', H, ms)
  end
  return cost
end
if c > tonumber(ARGV[3]) then
  redis.call('HINCRBY', H, f, -cost)  -- refused: give it back (the window started: a TTL)
  return cost - c
end
return c
