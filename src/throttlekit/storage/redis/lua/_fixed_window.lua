-- Each strategy is a block of statements that batch.lua and the strategy's own script paste
-- in place (no function is defined or called per check: scripts run on every request).
-- In scope: now, slack, H (the key family hash), aux (the sliding log's list or the fixed
-- window's string key, else H), field, limit, p (the period in microseconds), cap (the
-- token bucket's capacity), cost, and locals allowed, rem, reset, retry, state, ttl, known
-- set to 0, 0, 0, 0, false, 0, false. The block sets allowed (1/0), remaining, reset_us,
-- retry_us (-1 = never) and, when it allows a positive cost, state (what the charge writes,
-- true for the sliding log), ttl (the state's lifetime, microseconds) and known (the
-- field's old value: H exists).
-- The fixed window (see fixed_window.lua for its layout: aux is its string key
-- P{k}:w:<alg.id>): state is the new value when the window is new, true when the charge
-- adds to it.
--#include floordiv q=win a=now b=p
local base = (win % 524288) * 8589934592
local v = call('GET', aux)
local count, back, at = 0, false, now
if v then
  count = (tonumber(v) or -1) - base  -- (not a number: not a state of ours)
  if count < 0 or count >= 8589934592 then
    -- another window's. A later one (less than 2^18 windows ahead, mod 2^19) starting at
    -- most CLOCK_SKEW_US (_decision.py) from now (the next, or further when the period is
    -- shorter): another host's clock is ahead, decided as at its start (waits counted from
    -- now). Else the clock stepped back: its count carries into now's window, stored by a
    -- charge or a refusal
    local ahead = floor(count / 8589934592) % 524288
    if tonumber(v) and ahead > 0 and ahead < 262144 and (win + ahead) * p - now <= 1000000 then
      count, win = count % 8589934592, win + ahead
      at, base = win * p, (win % 524288) * 8589934592
    elseif tonumber(v) and ahead > 0 and ahead < 262144 then
      count, back = count % 8589934592, true
    else
      count = 0
    end
  end
end
local left = (win + 1) * p - at
if count + cost <= limit then
  allowed, rem = 1, limit - count - cost
  if count + cost > 0 then reset = left end
  if cost > 0 then
    state, ttl = true, left + at - now
    if count == 0 or back then state = format('%.0f', base + count + cost) end
  end
else
  retry = left
  if cost > limit then retry = -1 end
  if count > 0 then reset = left end
  if count < limit then rem = limit - count end
  if back and cost > 0 and cost <= limit then  -- (fixed_window.lua is sent no other)
    state, ttl = format('%.0f', base + count), left
  end
end
if at > now then
  if reset > 0 then reset = reset + at - now end
  if retry > 0 then retry = retry + at - now end
end
