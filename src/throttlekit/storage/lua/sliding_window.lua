-- throttlekit: one sliding_window check, the common case of batch.lua (which it mirrors
-- exactly, in integer microseconds) without its generic loop.
-- KEYS: the key family hash H.
-- ARGV: now ('' = server TIME), cost (-1 - cost for a check decided but not charged),
--       ttl slack (ms, used only with a client-given now), field, limit, period_us.
-- Returns "allowed remaining reset_us retry_us" (retry -1 = never): a string is cheaper to
-- send back than an array.
--#include single
local H, field = KEYS[1], ARGV[4]

--#include arith

local win = idiv(now, p)
local cur, prev = 0, 0
local v = call('HGET', H, field)
if v then  -- "window current previous"
  local s1 = string.find(v, ' ', 1, true)
  local s2 = string.find(v, ' ', s1 + 1, true)
  local w = tonumber(string.sub(v, 1, s1 - 1))
  if w == win then
    cur, prev = tonumber(string.sub(v, s1 + 1, s2 - 1)), tonumber(string.sub(v, s2 + 1))
  elseif w == win - 1 then
    prev = tonumber(string.sub(v, s1 + 1, s2 - 1))
  end
end
local left = p - (now - win * p)
-- prev * left + cur * p <= limit * p, divided by p: w = ceil(prev * left / p)
local wq, wr = muldiv(prev, left, p)
if wr > 0 then wq = wq + 1 end
local k = limit - cur - cost
local reset = 0
if k >= 0 and wq <= k then
  if cur + cost > 0 then reset = (win + 2) * p - now elseif prev > 0 then reset = left end
  if cost > 0 and charge then
    call('HSET', H, field, string.format('%.0f %.0f %.0f', win, cur + cost, prev))
    local ms = floor(((win + 2) * p - now + 999) / 1000) + slack  -- extend, never shorten
    if v and GT then
      call('PEXPIRE', H, ms, 'GT')
    elseif call('PTTL', H) < ms then
      call('PEXPIRE', H, ms)
    end
  end
  return string.format(OUT, 1, k - wq, reset, 0)
end
local retry
if cost > limit then
  retry = -1
elseif k >= 0 then
  retry = (win + 1) * p - muldiv(k, p, prev) - now
else
  retry = (win + 2) * p - muldiv(limit - cost, p, cur) - now
end
local rem = limit - cur - wq
if rem < 0 then rem = 0 end
if cur > 0 then reset = (win + 2) * p - now elseif prev > 0 then reset = left end
return string.format(OUT, 0, rem, reset, retry)
