"""Browser origins as R2 accepts them in a CORS rule (`scheme://host[:port]`, at most one `*`): used by
the config (the worker's own CORS) and by the bucket CORS validator alike."""

from __future__ import annotations

import re

_ORIGIN = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>[^/?#:]*)(?::(?P<port>[^/?#]*))?(?P<rest>.*)$"
)


def origin_problem(origin: str) -> str | None:
    """Why R2 would reject this AllowedOrigins entry (with the fix), or None if it is fine."""
    if origin == "*":
        return None
    m = _ORIGIN.match(origin)
    if m is None:
        guess = origin.split("/", 1)[0] if "://" not in origin else origin
        return f"{origin!r} is not scheme://host[:port]; use e.g. 'https://{guess}'"
    scheme, host, port, rest = m["scheme"], m["host"], m["port"], m["rest"]
    base = f"{scheme}://{host}" + (f":{port}" if port is not None else "")
    if rest:
        return f"{origin!r} has a path; an origin is scheme://host[:port] only: use {base!r}"
    if not host:
        return f"{origin!r} has no host"
    if origin.count("*") > 1:
        return f"{origin!r} has more than one '*'; at most one wildcard per origin"
    if port is not None and "*" in port:
        return f"{origin!r} has '*' in the port; list each port explicitly"
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        return f"{origin!r} has an invalid port {port!r}"
    return None
