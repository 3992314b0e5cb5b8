-- The charge of fixed_window, sliding_window and token_bucket: write the state the decision
-- computed, extend the TTL.
call('HSET', H, field, state)
--#include expire key=H known=known
