"""The gateway without access keys: what keeps web pages out of it.

Without keys the gateway listens on loopback and checks no signature, so the programs of
this machine's user are trusted. A web page that user opens is not, though its requests
come from this machine too:

- DNS rebinding: a page of ``evil.example`` makes its name resolve to 127.0.0.1 and then
  reads the gateway as its own origin. The browser still sends ``Host: evil.example``, so
  a Host that is not a loopback name or address is refused.
- Cross-site requests: a page posts a form (``text/plain``) to the gateway, which needs
  no CORS preflight. Browsers send ``Origin`` with it, so an Origin that is not loopback
  is refused; and an invocation must carry ``x-fc-invocation-type`` or a JSON content type,
  which no form can send and which a script may send only after a preflight that the
  gateway never grants.

Pure: request parts in, AccessDenied out.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from asyncinvoke.gateway.fcapi import INVOCATION_TYPE, AccessDenied

KEYS_HINT = (
    "set ASYNCINVOKE_ACCESS_KEYS (or ASYNCINVOKE_ACCESS_KEYS_FILE) to accept signed "
    "requests from anywhere"
)
# Probes for liveness and readiness carry nothing a page could use, and a prober may name
# the service as it knows it: they are answered whatever the Host.
UNGUARDED_PATHS = frozenset({"/healthz", "/readyz"})
_PORT = re.compile(r":[0-9]{1,5}")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1), without port or brackets."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(authority: str) -> str | None:
    """The host of ``host[:port]`` or ``[v6]:port``; None if it is not that shape."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, rest = authority[1:end], authority[end + 1 :]
    else:
        host, colon, port = authority.partition(":")
        rest = colon + port
    if rest and not _PORT.fullmatch(rest):
        return None
    return host


def _is_loopback_origin(origin: str) -> bool:
    scheme, separator, authority = origin.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        return False  # "null" (sandboxed pages, file://) and other schemes
    host = host_of(authority)
    return host is not None and is_loopback(host)


def check_unsigned_request(path: str, headers: Mapping[str, str]) -> None:
    """AccessDenied unless the request is addressed to loopback and not from a web page
    of another origin. Everything but the probes (UNGUARDED_PATHS) is checked."""
    if path in UNGUARDED_PATHS:
        return
    raw_host = headers.get("Host")
    host = None if raw_host is None else host_of(raw_host)
    if host is None or not is_loopback(host):
        raise AccessDenied(
            f"this gateway has no access keys, so it answers only requests addressed to "
            f"localhost, 127.0.0.1 or [::1], got Host {raw_host!r}: call it by a loopback "
            f"address, or {KEYS_HINT}",
        )
    origin = headers.get("Origin")
    if origin is not None and not _is_loopback_origin(origin):
        raise AccessDenied(
            f"this gateway has no access keys, so it refuses requests from web pages of "
            f"other origins (Origin {origin!r}): call it from a program, not a browser, "
            f"or {KEYS_HINT}",
        )


def check_unsigned_invocation(headers: Mapping[str, str], content_type: str) -> None:
    """AccessDenied for an invocation a plain HTML form could have sent."""
    media_type = content_type.lower()
    if INVOCATION_TYPE in headers or media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return
    raise AccessDenied(
        f"this gateway has no access keys, so an invocation must carry the "
        f"{INVOCATION_TYPE} header (Async or Sync) or Content-Type: application/json, "
        f"which a web page cannot send by itself: add '{INVOCATION_TYPE}: Async' (or "
        f"Sync), or {KEYS_HINT}",
    )
