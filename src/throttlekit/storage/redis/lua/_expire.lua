--#params key known
do  -- extend key's TTL to cover ttl (microseconds), never shorten it; known: key exists
  local ms = floor((ttl + 999) / 1000) + slack
  if known and GT then
    call('PEXPIRE', key, ms, 'GT')
  elseif call('PTTL', key) < ms then
    call('PEXPIRE', key, ms)
  end
end
