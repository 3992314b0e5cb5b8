-- The charge of fixed_window, sliding_window and token_bucket: write the state the decision
-- computed, extend the TTL (ttl 0: it already covers the state).
call('HSET', H, field, state)
if ttl > 0 then
--#include expire key=H known=known
end
