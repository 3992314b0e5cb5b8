-- throttlekit: one fixed_window check (see _single.lua; the strategy: _fixed_window.lua).
--#include single
--#include fixed_window
return one(fixed_window)
