-- The time of a script: ARGV[t] ('' = the server's TIME), and the TTL slack in ms, ARGV[s],
-- used only with a client-given time (the server cannot check the client's clock).
local function clock(t, s)
  if ARGV[t] == '' then
    local now = redis.call('TIME')
    return tonumber(now[1]) * 1000000 + tonumber(now[2]), 0
  end
  return tonumber(ARGV[t]), tonumber(ARGV[s])
end
