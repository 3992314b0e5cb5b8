-- throttlekit: one fixed_window check, the common case of batch.lua (which it mirrors
-- exactly, in integer microseconds) without its generic loop.
-- KEYS: the key family hash H.
-- ARGV: now ('' = server TIME), cost (-1 - cost for a check decided but not charged),
--       ttl slack (ms, used only with a client-given now), field, limit, period_us.
-- Returns "allowed remaining reset_us retry_us" (retry -1 = never): a string is cheaper to
-- send back than an array.
--#include single
local H, field = KEYS[1], ARGV[4]

local win = floor(now / p)  -- exact floor(now / p) below 2^53
local r = now - win * p
if r < 0 then win = win - 1 elseif r >= p then win = win + 1 end

local count = 0
local v = call('HGET', H, field)
if v then
  local sp = string.find(v, ' ', 1, true)
  if tonumber(string.sub(v, 1, sp - 1)) == win then count = tonumber(string.sub(v, sp + 1)) end
end
local left = (win + 1) * p - now

if count + cost <= limit then
  if cost > 0 and charge then
    call('HSET', H, field, string.format('%.0f %.0f', win, count + cost))
    local ms = floor((left + 999) / 1000) + slack  -- extend the TTL, never shorten it
    if v and GT then
      call('PEXPIRE', H, ms, 'GT')
    elseif call('PTTL', H) < ms then
      call('PEXPIRE', H, ms)
    end
  end
  if count + cost > 0 then return string.format(OUT, 1, limit - count - cost, left, 0) end
  return string.format(OUT, 1, limit, 0, 0)
end
local rem, reset, retry = 0, 0, left
if cost > limit then retry = -1 end
if count > 0 then reset = left end
if count < limit then rem = limit - count end
return string.format(OUT, 0, rem, reset, retry)
