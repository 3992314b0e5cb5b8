-- What the strategies share (after --#include clock and `local now, slack = clock(...)`).
local call, floor = redis.call, math.floor
-- PEXPIRE .. GT (Redis 7+) extends a TTL, never shortens it, in one call: used when a key is
-- known to exist, hence to have a TTL (every write sets one); else PTTL, PEXPIRE.
local GT = (redis.REDIS_VERSION_NUM or 0) >= 0x070000

local function expire(key, ttl_us, existed)  -- extend key's TTL to cover ttl_us, never shorten
  local ms = floor((ttl_us + 999) / 1000) + slack
  if existed and GT then
    call('PEXPIRE', key, ms, 'GT')
  elseif call('PTTL', key) < ms then
    call('PEXPIRE', key, ms)
  end
end

local function fmt(x) return string.format('%.0f', x) end

-- A strategy's charge (see _fixed_window.lua): write the state it computed, extend the TTL.
local function set_state(H, aux, field, cost, state, ttl_us, existed)
  call('HSET', H, field, state)
  expire(H, ttl_us, existed)
end

local function parse(e)  -- "a b" -> a, b
  local sp = string.find(e, ' ', 1, true)
  return tonumber(string.sub(e, 1, sp - 1)), tonumber(string.sub(e, sp + 1))
end

--#include arith
