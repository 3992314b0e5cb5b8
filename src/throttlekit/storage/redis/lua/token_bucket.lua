-- throttlekit: one token_bucket check (see _single.lua; the strategy: _token_bucket.lua).
--#include single
--#include token_bucket
return one(token_bucket)
