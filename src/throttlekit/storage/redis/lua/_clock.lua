--#params now_at slack_at
-- The time of a script: now from ARGV[now_at] ('' = the server's TIME), and slack, the
-- TTL slack in ms from ARGV[slack_at], used only with a client-given time (the server
-- cannot check the client's clock).
local now, slack = ARGV[now_at], 0
if now == '' then
  local tm = redis.call('TIME')
  now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
else
  now, slack = tonumber(now), tonumber(ARGV[slack_at])
end
