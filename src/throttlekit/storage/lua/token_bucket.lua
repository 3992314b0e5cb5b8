-- throttlekit: one token_bucket check, the common case of batch.lua (which it mirrors
-- exactly, in integer microseconds) without its generic loop.
-- KEYS: the key family hash H.
-- ARGV: now ('' = server TIME), cost (-1 - cost for a check decided but not charged),
--       ttl slack (ms, used only with a client-given now), field, limit, period_us, capacity.
-- Returns "allowed remaining reset_us retry_us" (retry -1 = never): a string is cheaper to
-- send back than an array.
--#include single
local H, field = KEYS[1], ARGV[4]
local cap = tonumber(ARGV[7])

--#include arith

local function drain(W, R)  -- ceil((W * p + R) / limit)
  local q, r = muldiv(W, p, limit)
  return q + idiv(r + R + limit - 1, limit)
end

-- The debt (tokens in use x period) is kept as W * p + R, 0 <= R < p, so that it stays
-- exact for every rate (the product itself may pass 2^53).
local W, R = 0, 0
local v = call('HGET', H, field)
if v then  -- "last W R"
  local s1 = string.find(v, ' ', 1, true)
  local s2 = string.find(v, ' ', s1 + 1, true)
  local last = tonumber(string.sub(v, 1, s1 - 1))
  W, R = tonumber(string.sub(v, s1 + 1, s2 - 1)), tonumber(string.sub(v, s2 + 1))
  local el = now - last
  if el > 0 then
    if el >= drain(W, R) then
      W, R = 0, 0
    else
      local A, B = muldiv(el, limit, p)
      W, R = W - A, R - B
      if R < 0 then R = R + p; W = W - 1 end
      if W < 0 then W, R = 0, 0 end
    end
  elseif el < 0 then
    local A, B = muldiv(-el, limit, p)
    W, R = W + A, R + B
    if R >= p then R = R - p; W = W + 1 end
  end
end
local part = 0
if R > 0 then part = 1 end
if cost > cap then return string.format(OUT, 0, cap - W - part, drain(W, R), -1) end
local NW = W + cost
if NW < cap or (NW == cap and R == 0) then
  local reset = drain(NW, R)
  if cost > 0 and charge then
    call('HSET', H, field, string.format('%.0f %.0f %.0f', now, NW, R))
    local ms = floor((reset + 999) / 1000) + slack  -- extend the TTL, never shorten it
    if v and GT then
      call('PEXPIRE', H, ms, 'GT')
    elseif call('PTTL', H) < ms then
      call('PEXPIRE', H, ms)
    end
  end
  return string.format(OUT, 1, cap - NW - part, reset, 0)
end
return string.format(OUT, 0, cap - W - part, drain(W, R), drain(NW - cap, R))
