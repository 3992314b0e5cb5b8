-- throttlekit: decide (and charge) a batch of rate-limit checks, and look up blocklist keys.
-- Mirrors src/throttlekit/_algorithms.py exactly, in integer microseconds (values < 2^53).
--
-- KEYS: per check, the key family hash H and an auxiliary key (the sliding log's list, or
--       H again); then one blocklist entry key per looked-up block key.
-- ARGV: now ('' = server TIME), consume (1/0), n checks, n block keys, ttl slack (ms, used
--       only with a client-given now); then per check: kind (fw/sw/tb/sl), field, limit,
--       period_us, capacity, cost, flags (1: independent, 2: probe — decided, never charged).
--       A batch in which any looked-up block key is found charges nothing.
-- Returns: per check allowed, remaining, reset_us, retry_us (-1 = never); then per block
--          key its expiry ('inf' or microseconds) and reason, or false, false.
local floor = math.floor
local call = redis.call
local now, slack
if ARGV[1] == '' then
  local t = call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  slack = 0
else
  now = tonumber(ARGV[1])
  slack = tonumber(ARGV[5])
end
local consume = ARGV[2] == '1'
local n = tonumber(ARGV[3])
local nb = tonumber(ARGV[4])

--#include arith

local function drain(W, R, p, limit)  -- ceil((W * p + R) / limit)
  local q, r = muldiv(W, p, limit)
  return q + idiv(r + R + limit - 1, limit)
end

local function fmt(x) return string.format('%.0f', x) end

local function expire(key, ttl_us)  -- extend key's TTL to cover ttl_us, never shorten it
  local ms = floor((ttl_us + 999) / 1000) + slack
  if call('PTTL', key) < ms then call('PEXPIRE', key, ms) end
end

local function parse(e)  -- "a b" -> a, b
  local sp = string.find(e, ' ', 1, true)
  return tonumber(string.sub(e, 1, sp - 1)), tonumber(string.sub(e, sp + 1))
end

local out = {}
local fns, indeps = {}, {}  -- charges to apply once every check is decided
local all_ok = true

for i = 1, n do
  local b = 5 + (i - 1) * 7
  local kind, field = ARGV[b + 1], ARGV[b + 2]
  local limit, p, cap = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local cost, flags = tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7])
  local indep, probe = flags % 2 == 1, flags >= 2
  local H, aux = KEYS[2 * i - 1], KEYS[2 * i]
  local allowed, rem, reset, retry = 0, 0, 0, 0
  local apply = false

  if kind == 'fw' then
    local win = idiv(now, p)
    local count = 0
    local v = call('HGET', H, field)
    if v then
      local w, c = parse(v)
      if w == win then count = c end
    end
    local left = (win + 1) * p - now
    if count + cost <= limit then
      allowed, rem = 1, limit - count - cost
      if count + cost > 0 then reset = left end
      apply = function()
        call('HSET', H, field, fmt(win) .. ' ' .. fmt(count + cost))
        expire(H, left)
      end
    else
      if cost > limit then retry = -1 else retry = left end
      if count > 0 then reset = left end
      if count < limit then rem = limit - count end
    end

  elseif kind == 'sw' then
    local win = idiv(now, p)
    local cur, prev = 0, 0
    local v = call('HGET', H, field)
    if v then
      local sp1 = string.find(v, ' ', 1, true)
      local w = tonumber(string.sub(v, 1, sp1 - 1))
      local c, pr = parse(string.sub(v, sp1 + 1))
      if w == win then cur, prev = c, pr elseif w == win - 1 then prev = c end
    end
    local left = p - (now - win * p)
    -- prev * left + cur * p <= limit * p, divided by p: w = ceil(prev * left / p)
    local wq, wr = muldiv(prev, left, p)
    if wr > 0 then wq = wq + 1 end
    local k = limit - cur - cost
    if k >= 0 and wq <= k then
      allowed, rem = 1, k - wq
      if cur + cost > 0 then reset = (win + 2) * p - now elseif prev > 0 then reset = left end
      apply = function()
        call('HSET', H, field, fmt(win) .. ' ' .. fmt(cur + cost) .. ' ' .. fmt(prev))
        expire(H, (win + 2) * p - now)
      end
    else
      if cost > limit then
        retry = -1
      elseif k >= 0 then
        retry = (win + 1) * p - muldiv(k, p, prev) - now
      else
        retry = (win + 2) * p - muldiv(limit - cost, p, cur) - now
      end
      rem = limit - cur - wq
      if rem < 0 then rem = 0 end
      if cur > 0 then reset = (win + 2) * p - now elseif prev > 0 then reset = left end
    end

  elseif kind == 'tb' then
    -- The debt (tokens in use x period) is kept as W * p + R, 0 <= R < p, so that it stays
    -- exact for every rate (the product itself may pass 2^53).
    local W, R = 0, 0
    local v = call('HGET', H, field)
    if v then
      local sp1 = string.find(v, ' ', 1, true)
      local last = tonumber(string.sub(v, 1, sp1 - 1))
      W, R = parse(string.sub(v, sp1 + 1))
      local el = now - last
      if el > 0 then
        if el >= drain(W, R, p, limit) then
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
    rem = cap - W - part
    reset = drain(W, R, p, limit)
    if cost > cap then
      retry = -1
    else
      local NW = W + cost
      if NW < cap or (NW == cap and R == 0) then
        allowed, rem, reset = 1, cap - NW - part, drain(NW, R, p, limit)
        local ttl = reset
        apply = function()
          call('HSET', H, field, fmt(now) .. ' ' .. fmt(NW) .. ' ' .. fmt(R))
          expire(H, ttl)
        end
      else
        retry = drain(NW - cap, R, p, limit)
      end
    end

  else  -- 'sl': the list aux holds "time cost" entries, oldest first; H's field their total
    local total = tonumber(call('HGET', H, field) or '0')
    local horizon = now - p
    local trimmed = false
    while total > 0 do
      local e = call('LINDEX', aux, 0)
      if not e then total = 0; trimmed = true; break end
      local t, c = parse(e)
      if t > horizon then break end
      call('LPOP', aux)
      total = total - c
      trimmed = true
    end
    if trimmed then call('HSET', H, field, fmt(total)) end
    local function last_time()
      local e = call('LINDEX', aux, -1)
      return (parse(e))
    end
    if total + cost <= limit then
      allowed, rem = 1, limit - total - cost
      if cost > 0 then reset = p elseif total > 0 then reset = last_time() + p - now end
      if cost > 0 then
        apply = function()
          local tot = tonumber(call('HGET', H, field) or '0')
          local e = call('LINDEX', aux, -1)
          if e then
            local t, c = parse(e)
            if t == now then
              call('LSET', aux, -1, fmt(now) .. ' ' .. fmt(c + cost))
            else
              call('RPUSH', aux, fmt(now) .. ' ' .. fmt(cost))
            end
          else
            call('RPUSH', aux, fmt(now) .. ' ' .. fmt(cost))
          end
          call('HSET', H, field, fmt(tot + cost))
          expire(aux, p)
          expire(H, p)
        end
      end
    else
      if cost > limit then
        retry = -1
      else
        local need, freed, at, start = total + cost - limit, 0, now, 0
        while true do
          local chunk = call('LRANGE', aux, start, start + 63)
          if #chunk == 0 then break end
          local done = false
          for j = 1, #chunk do
            local t, c = parse(chunk[j])
            freed = freed + c
            if freed >= need then at = t + p; done = true; break end
          end
          if done then break end
          start = start + 64
        end
        retry = at - now
      end
      if total > 0 then reset = last_time() + p - now end
      if total < limit then rem = limit - total end
    end
  end

  if allowed == 0 and not indep then all_ok = false end
  if apply and allowed == 1 and cost > 0 and consume and not probe then
    fns[#fns + 1] = apply
    indeps[#indeps + 1] = indep
  end
  out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] = allowed, rem, reset, retry
end

local o = 4 * n
local blocked = false
for j = 1, nb do
  local v = call('GET', KEYS[2 * n + j])
  local exp, why = false, false
  if v then
    local sp = string.find(v, ' ', 1, true)
    local e = string.sub(v, 1, sp - 1)
    if e == 'inf' or tonumber(e) > now then
      exp, why = e, string.sub(v, sp + 1)
      blocked = true
    end
  end
  out[o + 2 * j - 1], out[o + 2 * j] = exp, why
end

-- all-or-nothing: charge only when every dependent check allows (independent ones alone),
-- and nothing at all for a blocked request
if not blocked then
  for j = 1, #fns do
    if all_ok or indeps[j] then fns[j]() end
  end
end
return out
