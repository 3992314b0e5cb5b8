"""The status a decorated view's outcome is counted as (``count_when``): Flask also takes a
status line as a string in its ``(body, status)`` tuples."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from throttlekit._settling import status_of


@pytest.mark.parametrize(("outcome", "status"), [
    (("missing", "404 NOT FOUND"), 404),
    (("missing", "404"), 404),
    (("gone", "410 Gone", {"X-A": "b"}), 410),
    (("ok", HTTPStatus.CREATED), 201),
    (("ok", {"X-A": "b"}), 200),
    (("odd", "not a status"), 200),
], ids=["str-line", "str-code", "str-with-headers", "httpstatus", "headers-only", "junk"])
def test_flask_tuples_with_a_status_string(outcome, status):
    """``return "missing", "404 NOT FOUND"`` is a 404 for ``count_when``, as Flask sends
    it, not a 200."""
    assert status_of(outcome) == status
