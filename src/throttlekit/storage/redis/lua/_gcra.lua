-- See _fixed_window.lua for the shape of a strategy's block. The
-- token bucket whose emission interval T = p / limit is a whole number of microseconds
-- (kind 'tg'; see _scripts.kind): its debt is always limit x a whole number of
-- microseconds, so its state is one number, the time the bucket is full again (GCRA's
-- theoretical arrival time), and the debt at now is limit * (full - now). A state of
-- another shape (written before) counts as none.
local v = call('HGET', H, field)
local full = v and tonumber(v)
local T = p / limit
local capT, dt = cap * T, 0
if full and full > now then dt = full - now end
-- more than a full bucket: the clock stepped back (or the capacity was lowered): a full
-- bucket, stored by a charge or a refusal (see _algorithms.TokenBucket._back)
local back = dt > capT
if back then dt = capT end
local new = dt + cost * T
local r = capT - new
if cost <= cap and r >= 0 then
  allowed, reset = 1, new
  if cost > 0 then
    -- H's TTL runs to the end of the period in which the bucket is full again, so that a
    -- charge extends it (a write) only when that moves to a later period
    -- (floor of a double quotient: never below the exact one, and computed alike each time)
    local q = floor((now + new) / p)
    state, ttl, known = format('%.0f', now + new), (q + 1) * p - now, v
    if full and q <= floor(full / p) then ttl = 0 end
  end
else
  r, reset, retry = capT - dt, dt, -1
  if cost <= cap then retry = new - capT end
  if back and cost > 0 then state, ttl, known = format('%.0f', now + dt), dt, v end
end
rem = floor(r / T)  -- exact floor(r / T)
do
  local x = r - rem * T
  if x < 0 then rem = rem - 1 elseif x >= T then rem = rem + 1 end
end
