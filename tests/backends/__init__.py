"""One module per storage backend; the contract suite runs over every one of them.

A backend module defines:

* ``MARKS``: pytest marks for its tests (e.g. ``[pytest.mark.redis]``);
* ``STRATEGIES``: the strategy names it supports;
* ``session()``: a context manager run once per test session (start servers; yield any
  context object, e.g. a server URL);
* ``make_storage(ctx)``: a fresh, isolated Storage (own key prefix or flushed database).

Adding a backend to every contract test is adding a module here and its name to ``NAMES``.
"""

NAMES = ["memory", "redis", "redis_cluster", "redis_sentinel", "memcached"]
