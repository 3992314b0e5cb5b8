-- throttlekit: one fixed_window check with the caller's clock, the common case in the fewest
-- commands. The field <alg.id> of the key family hash H holds base + count, where base is
-- (window mod 2^19) x 2^33 (counts stay below 2^33, the sum below 2^53: exact in Lua), so
-- an allowed check in a window already started is one HINCRBY; a new window overwrites the
-- field (HSET) and extends H's TTL. The caller computes the window, base and TTL from its
-- own clock and decides from the count returned. Every argument costs Redis time on every
-- call: only the ones the common case reads, the TTL last.
-- KEYS[1]: H. ARGV: alg.id, cost (-1: only read the count), limit, base, TTL (ms).
-- Returns: read: the count; charged: the new count (> 0, allowed), or minus the count
--          before (< 0, refused: nothing stays charged).
-- A later window's count (less than 2^18 windows ahead, mod 2^19: the clock stepped back)
-- carries into this window, stored by a charge or a refusal (see _algorithms.FixedWindow).
-- (ahead: how many windows the field's is ahead of this one, mod 2^19)
local H, f, cost, base = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
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
if c > 0 and c < 8589934592 and v ~= cost then  -- the window's count, cost added
  if c > tonumber(ARGV[3]) then
    redis.call('HINCRBY', H, f, -cost)  -- refused: give it back (the window started: a TTL)
    return cost - c
  end
  return c
end
if v ~= cost and v ~= -1 then
  local ahead = math.floor((c - cost) / 8589934592) % 524288
  if ahead > 0 and ahead < 262144 then  -- a later window's: the clock stepped back
    c = (c - cost) % 8589934592 + cost
    if c > tonumber(ARGV[3]) then
      redis.call('HSET', H, f, string.format('%.0f', base + c - cost))
      return cost - c
    end
    redis.call('HSET', H, f, string.format('%.0f', base + c))
    return c
  end
end
-- a new window (the field was an earlier window's, or none): its count is cost (<= limit)
redis.call('HSET', H, f, base + cost)  -- (a Lua number below 2^53: written exactly)
local ms = tonumber(ARGV[5])
if (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  if redis.call('PTTL', H) < ms then redis.call('PEXPIRE', H, ms) end
elseif v == cost or v == -1 then  -- H may be new (no TTL yet): NX, else it had one
  if redis.call('PEXPIRE', H, ms, 'NX') == 0 then redis.call('PEXPIRE', H, ms, 'GT') end
else
  redis.call('PEXPIRE', H, ms, 'GT')  -- H had a TTL: extend it, never shorten it
end
return cost
