-- throttlekit: one sliding_log check, the common case of batch.lua (which it mirrors
-- exactly, in integer microseconds) without its generic loop.
-- KEYS: the key family hash H, the log's list L ("time cost" entries, oldest first; H's
--       field holds their total).
-- ARGV: now ('' = server TIME), cost (-1 - cost for a check decided but not charged),
--       ttl slack (ms, used only with a client-given now), field, limit, period_us.
-- Returns "allowed remaining reset_us retry_us" (retry -1 = never): a string is cheaper to
-- send back than an array.
--#include single
local find, sub = string.find, string.sub
local H, L, field = KEYS[1], KEYS[2], ARGV[4]

local known = call('HGET', H, field)  -- H exists
local total = tonumber(known or '0')
local horizon = now - p
local trimmed = false
while total > 0 do
  local e = call('LINDEX', L, 0)
  if not e then total = 0; trimmed = true; break end
  local sp = find(e, ' ', 1, true)
  if tonumber(sub(e, 1, sp - 1)) > horizon then break end
  call('LPOP', L)
  total = total - tonumber(sub(e, sp + 1))
  trimmed = true
end
if trimmed then call('HSET', H, field, string.format('%.0f', total)) end

if total + cost <= limit then
  local reset = 0
  if cost > 0 then
    reset = p
    if charge then
      local e = call('LINDEX', L, -1)
      local sp = e and find(e, ' ', 1, true)
      if e and tonumber(sub(e, 1, sp - 1)) == now then
        call('LSET', L, -1, string.format('%.0f %.0f', now, tonumber(sub(e, sp + 1)) + cost))
      else
        call('RPUSH', L, string.format('%.0f %.0f', now, cost))
      end
      call('HSET', H, field, string.format('%.0f', total + cost))
      local ms = floor((p + 999) / 1000) + slack  -- extend the TTLs, never shorten them
      if not e then  -- RPUSH made L: it has no TTL yet
        call('PEXPIRE', L, ms)
      elseif GT then
        call('PEXPIRE', L, ms, 'GT')
      elseif call('PTTL', L) < ms then
        call('PEXPIRE', L, ms)
      end
      if known and GT then
        call('PEXPIRE', H, ms, 'GT')
      elseif call('PTTL', H) < ms then
        call('PEXPIRE', H, ms)
      end
    end
  elseif total > 0 then
    local e = call('LINDEX', L, -1)
    reset = tonumber(sub(e, 1, find(e, ' ', 1, true) - 1)) + p - now
  end
  return string.format(OUT, 1, limit - total - cost, reset, 0)
end

local retry, reset, rem = -1, 0, 0
if cost <= limit then
  local need, freed, at, start = total + cost - limit, 0, now, 0
  while true do
    local chunk = call('LRANGE', L, start, start + 63)
    if #chunk == 0 then break end
    local done = false
    for j = 1, #chunk do
      local e = chunk[j]
      local sp = find(e, ' ', 1, true)
      freed = freed + tonumber(sub(e, sp + 1))
      if freed >= need then at = tonumber(sub(e, 1, sp - 1)) + p; done = true; break end
    end
    if done then break end
    start = start + 64
  end
  retry = at - now
end
if total > 0 then
  local e = call('LINDEX', L, -1)
  reset = tonumber(sub(e, 1, find(e, ' ', 1, true) - 1)) + p - now
end
if total < limit then rem = limit - total end
return string.format(OUT, 0, rem, reset, retry)
