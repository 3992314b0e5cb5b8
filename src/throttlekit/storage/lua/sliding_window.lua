-- throttlekit: one sliding_window check, the common case of batch.lua (which it mirrors
-- exactly, in integer microseconds) without its generic loop.
-- KEYS: the key family hash H.
-- ARGV: now ('' = server TIME), cost (-1 - cost for a check decided but not charged),
--       ttl slack (ms, used only with a client-given now), field, limit, period_us.
-- Returns "allowed remaining reset_us retry_us" (retry -1 = never): a string is cheaper to
-- send back than an array.
local OUT = '%.0f %.0f %.0f %.0f'
local call, floor = redis.call, math.floor
-- PEXPIRE .. GT (Redis 7+) extends a TTL, never shortens it, in one call: used when H is
-- known to exist, hence to have a TTL (every write of H sets one); else PTTL, PEXPIRE.
local GT = (redis.REDIS_VERSION_NUM or 0) >= 0x070000
local now, slack = ARGV[1], 0
if now == '' then
  local t = call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now, slack = tonumber(now), tonumber(ARGV[3])
end
local H, field = KEYS[1], ARGV[4]
local cost, limit, p = tonumber(ARGV[2]), tonumber(ARGV[5]), tonumber(ARGV[6])
local charge = cost >= 0
if not charge then cost = -1 - cost end

local function idiv(a, b)  -- floor(a / b), exact for integers below 2^53
  local q = floor(a / b)
  local r = a - q * b
  if r < 0 then q = q - 1 elseif r >= b then q = q + 1 end
  return q
end

local function muldiv(a, b, c)  -- floor(a * b / c) and the remainder, exact beyond 2^53 too
  local x = a * b
  if x < 9007199254740992 then
    local q = idiv(x, c)
    return q, x - q * c
  end
  local bq = idiv(b, c)
  local br = b - bq * c
  local q, r, hi, rest = 0, 0, 1, a
  while hi * 2 <= rest do hi = hi * 2 end
  while hi >= 1 do  -- binary long multiplication of a * br, reduced modulo c
    q = q * 2
    r = r * 2
    if r >= c then r = r - c; q = q + 1 end
    if rest >= hi then
      rest = rest - hi
      r = r + br
      if r >= c then r = r - c; q = q + 1 end
    end
    hi = hi / 2
  end
  return a * bq + q, r
end

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
