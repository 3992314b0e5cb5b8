-- throttlekit: one sliding_window check (see _single.lua; the strategy: _sliding_window.lua).
--#include single
--#include sliding_window
return one(sliding_window)
