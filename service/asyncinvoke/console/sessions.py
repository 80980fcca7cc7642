"""The console's session cookie and CSRF tokens. Pure: values in, values out.

Every visitor gets a session (a random id, an expiry, and the access key id once logged
in), kept in one signed cookie: ``base64url(JSON) "." base64url(HMAC-SHA256)``. Nothing
is stored on the server, so gateways that share their access keys share sessions too.
The signing key is derived from the configured access keys (all of them): a session
signed under keys that were changed since no longer verifies. Without keys it is a
random key of this process, so sessions end with it.

A form's CSRF token is an HMAC of the session id under the same key: a page of another
site can neither read the cookie (HttpOnly, SameSite=Strict) nor compute the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

import orjson

COOKIE = "asyncinvoke_console"
DEFAULT_SESSION_TTL_S = 8 * 3600
_SESSION_CONTEXT = b"asyncinvoke console session v1"
_CSRF_CONTEXT = b"csrf:"


@dataclass(frozen=True, slots=True)
class Session:
    sid: str  # random; what the CSRF token is bound to
    expires_ms: int
    key_id: str | None = None  # the access key it logged in with; None before login


def signing_key(access_keys: dict[str, str]) -> bytes:
    """Derived from every configured key pair, or random for this process without keys."""
    if not access_keys:
        return os.urandom(32)
    material = b"\n".join(
        f"{key_id}\0{secret}".encode() for key_id, secret in sorted(access_keys.items())
    )
    return hmac.new(material, _SESSION_CONTEXT, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, key: bytes, ttl_s: int = DEFAULT_SESSION_TTL_S):
        self._key = key
        self.ttl_s = ttl_s

    def new(self, now_ms: int, key_id: str | None = None) -> Session:
        return Session(secrets.token_urlsafe(18), now_ms + self.ttl_s * 1000, key_id)

    def dump(self, session: Session) -> str:
        body = _b64(orjson.dumps([session.sid, session.expires_ms, session.key_id]))
        return f"{body}.{self._mac(body.encode())}"

    def load(self, cookie: str | None, now_ms: int) -> Session | None:
        """The session, or None when the cookie is missing, forged, garbled or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        if not _same(mac, self._mac(_bytes(body))):
            return None
        try:
            sid, expires_ms, key_id = orjson.loads(_unb64(body))
        except (ValueError, TypeError):
            return None
        if not isinstance(sid, str) or type(expires_ms) is not int or expires_ms <= now_ms:
            return None
        if key_id is not None and not isinstance(key_id, str):
            return None
        return Session(sid, expires_ms, key_id)

    def csrf_token(self, session: Session) -> str:
        return self._mac(_CSRF_CONTEXT + session.sid.encode())

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and _same(token, self.csrf_token(session))

    def _mac(self, data: bytes) -> str:
        return _b64(hmac.new(self._key, data, hashlib.sha256).digest())


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of any text from a request (compare_digest refuses non-ASCII
    strings)."""
    return hmac.compare_digest(_bytes(given), _bytes(expected))


def check_secret(access_keys: dict[str, str], key_id: str, secret: str) -> bool:
    """Whether ``key_id``/``secret`` is a configured pair; the same time whether the id
    exists or not, so a guess learns nothing from the answer's delay."""
    expected = access_keys.get(key_id)
    reference = expected if expected is not None else secrets.token_hex(16)
    return _same(secret, reference) and expected is not None
