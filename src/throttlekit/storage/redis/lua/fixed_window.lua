-- throttlekit: one fixed_window check with the caller's clock, the common case in the fewest
-- commands. The window's count is the field "<alg.id>|<window>" of the key family hash H,
-- so an allowed check is one HINCRBY; the field "<alg.id>" indexes the live window (so a
-- new window deletes the last one's field, and reset() finds everything in H). The caller
-- computes the window and its TTL from its own clock and decides from the count returned.
-- KEYS[1]: H. ARGV: the window's field, cost (-1: only read the count), limit, TTL (ms),
--          alg.id, the window index.
-- Returns: read: the count; charged: the new count (> 0, allowed), or minus the count
--          before (< 0, refused: nothing stays charged).
local H, wf, cost = KEYS[1], ARGV[1], tonumber(ARGV[2])
if cost < 0 then return tonumber(redis.call('HGET', H, wf) or '0') end
local c = redis.call('HINCRBY', H, wf, cost)
if c > tonumber(ARGV[3]) then
  redis.call('HINCRBY', H, wf, -cost)  -- refused: give it back (c > cost: H keeps its TTL)
  return cost - c
end
if c == cost then  -- a new window: drop the last one, index this one, cover it with the TTL
  local id = ARGV[5]
  local old = redis.call('HGET', H, id)
  if old then redis.call('HDEL', H, id .. '|' .. old) end
  redis.call('HSET', H, id, ARGV[6])
  local ms = tonumber(ARGV[4])
  if old and (redis.REDIS_VERSION_NUM or 0) >= 0x070000 then
    redis.call('PEXPIRE', H, ms, 'GT')
  elseif redis.call('PTTL', H) < ms then
    redis.call('PEXPIRE', H, ms)
  end
end
return c
