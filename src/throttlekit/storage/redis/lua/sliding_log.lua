-- throttlekit: one sliding_log check (see _single.lua; the strategy: _sliding_log.lua).
--#include single
--#include sliding_log
return one(sliding_log)
