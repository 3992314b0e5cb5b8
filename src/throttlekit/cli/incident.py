"""``throttlekit incident URL``: the latest incident report of a status endpoint.

Reads ``URL/incidents`` (the status endpoint's path, with an
:class:`~throttlekit.monitor.incident.Incidents` mounted) and prints the newest report as
Markdown, or with ``--json`` as JSON. The token is ``--token``, ``--token-file FILE`` or
``THROTTLEKIT_TOKEN``.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .._errors import ConfigError
from ..monitor.incident import render_markdown
from ._output import add_token_options, plain, print_json, token_of

__all__ = ["fetch_incidents", "register", "run_incident"]

_SUFFIX = "/incidents"


def fetch_incidents(url: str, token: str | None, timeout: float = 10.0) -> list[Any]:
    """The reports at ``url`` (a status endpoint, or its ``/incidents``), newest first.
    ConfigError for a URL that is not http(s); OSError when the endpoint cannot be read."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"the status endpoint must be an http(s) URL, got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(_SUFFIX):
        path += _SUFFIX
    request = urllib.request.Request(
        urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")),
        headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        hint = {401: " (a token is needed: --token-file, THROTTLEKIT_TOKEN or --token)",
                403: " (this address may not read the status)",
                404: " (no incident recorder mounted there?)"}.get(exc.code, "")
        raise OSError(f"{path}: HTTP {exc.code}{hint}") from None
    except urllib.error.URLError as exc:
        raise OSError(f"{parts.netloc}: {exc.reason}") from None
    except ValueError as exc:
        raise OSError(f"{path}: not a JSON answer ({exc})") from None
    reports = data.get("incidents") if isinstance(data, dict) else None
    if not isinstance(reports, list):
        raise OSError(f"{path}: no incident list in the answer")
    return reports


def run_incident(args: Any) -> int:
    reports = fetch_incidents(args.url, token_of(args), args.timeout)
    if not reports:
        print("throttlekit incident: no incident reported yet", file=sys.stderr)
        return 1
    if args.json:
        print_json(reports[0])
    else:
        sys.stdout.write(render_markdown(reports[0]))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``incident`` command to the command line."""
    p = subparsers.add_parser(
        "incident", help="print the latest incident report of a status endpoint",
        description=plain(__doc__.split("\n\n")[1]) if __doc__ else None)
    p.add_argument("url", help="the status endpoint, e.g. https://example.com/throttlekit/status")
    add_token_options(p)
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    p.set_defaults(func=run_incident)
