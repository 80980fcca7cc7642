"""ACS3-HMAC-SHA256: the request signature of Alibaba Cloud's official SDKs, verified.

What the SDK signs (``alibabacloud_tea_openapi``, ``Utils.get_authorization``)::

    canonical request = METHOD \\n PATH \\n QUERY \\n HEADERS \\n SIGNED_HEADERS \\n BODY_HASH
    string to sign    = "ACS3-HMAC-SHA256" \\n hex(sha256(canonical request))
    Authorization     = ACS3-HMAC-SHA256 Credential=ID,SignedHeaders=a;b,Signature=hex(hmac)

PATH is the path as sent (percent-encoded); QUERY the parameters sorted by name, values
RFC 3986-encoded; HEADERS one ``name:value`` line per signed header, lower-cased and
sorted; BODY_HASH the ``x-acs-content-sha256`` header, which must be the body's hash.

Written by hand (hmac, hashlib): the SDKs only sign, and no maintained library verifies
ACS3 on a server. Replays are refused twice over: ``x-acs-date`` must be within
``MAX_CLOCK_SKEW_S`` of our clock, and an ``x-acs-signature-nonce`` is accepted once
for as long as its date is acceptable. Secrets never appear in logs or error messages.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import quote

from multidict import CIMultiDictProxy

from asyncinvoke.errors import ConfigError
from asyncinvoke.gateway.fcapi import AccessDenied, ServiceUnavailable

ALGORITHM = "ACS3-HMAC-SHA256"
DATE_HEADER = "x-acs-date"
NONCE_HEADER = "x-acs-signature-nonce"
CONTENT_HASH_HEADER = "x-acs-content-sha256"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Alibaba Cloud's own window for x-acs-date. A nonce is remembered as long as its
# request's date is within it, so the cache holds at most 2 x this many seconds.
MAX_CLOCK_SKEW_S = 900
MAX_NONCES = 2_000_000
KEYS_ENV = "ASYNCINVOKE_ACCESS_KEYS"
KEYS_FILE_ENV = "ASYNCINVOKE_ACCESS_KEYS_FILE"
# ACS3 requires every x-acs-* header to be signed. x-fc-* headers are covered when the
# client signs them (the Python SDK signs every header it sets; the Go and Java SDKs
# sign only x-acs-*, host and content-type), so they cannot be required here.
_MUST_SIGN_PREFIX = "x-acs-"

Headers = CIMultiDictProxy[str]


# -- access keys ---------------------------------------------------------------------------


def load_access_keys(env: Mapping[str, str]) -> dict[str, str]:
    """Access key id → secret from ASYNCINVOKE_ACCESS_KEYS (``ID:SECRET,ID:SECRET``) and
    ASYNCINVOKE_ACCESS_KEYS_FILE (one ``ID SECRET`` a line, ``#`` comments). Empty: no keys.
    """
    keys: dict[str, str] = {}
    inline = env.get(KEYS_ENV, "")
    for number, entry in enumerate(inline.split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        key_id, sep, secret = entry.partition(":")
        if not sep or not key_id.strip() or not secret.strip():
            raise ConfigError(
                f"entry {number} is not ID:SECRET (entries are separated by commas)",
                key=KEYS_ENV,
            )
        _add_key(keys, key_id.strip(), secret.strip(), KEYS_ENV)
    path = env.get(KEYS_FILE_ENV)
    if path:
        for key_id, secret in _read_keys_file(Path(path)):
            _add_key(keys, key_id, secret, path)
    return keys


def _read_keys_file(path: Path) -> Iterable[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read access keys: {exc.strerror}", path=str(path)) from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"line {number} is not 'ID SECRET'", path=str(path))
        yield parts[0], parts[1]


def _add_key(keys: dict[str, str], key_id: str, secret: str, source: str) -> None:
    if key_id in keys and keys[key_id] != secret:
        raise ConfigError(f"access key id {key_id!r} is given twice with different secrets",
                          path=source)
    keys[key_id] = secret


# -- the signature -------------------------------------------------------------------------


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    encoded = sorted((name, quote(value, safe="~")) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_request(
    method: str,
    raw_path: str,
    query: Iterable[tuple[str, str]],
    headers: Headers,
    signed_headers: list[str],
    body_hash: str,
) -> str:
    header_lines = "".join(
        f"{name}:{','.join(sorted(value.strip() for value in headers.getall(name, ())))}\n"
        for name in signed_headers
    )
    return "\n".join(
        (
            method,
            raw_path or "/",
            canonical_query(query),
            header_lines,
            ";".join(signed_headers),
            body_hash,
        )
    )


def signature(secret: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{digest}"
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def parse_authorization(value: str) -> tuple[str, list[str], str]:
    """``ACS3-HMAC-SHA256 Credential=ID,SignedHeaders=a;b,Signature=HEX`` → its parts."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise AccessDenied(
            f"the Authorization header must use {ALGORITHM} (the official SDKs' default), "
            f"got {algorithm!r}"
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, _, field_value = part.strip().partition("=")
        fields[name] = field_value
    credential = fields.get("Credential", "")
    signed = fields.get("SignedHeaders", "")
    given = fields.get("Signature", "")
    if not credential or not signed or not given:
        raise AccessDenied(
            "the Authorization header needs Credential, SignedHeaders and Signature"
        )
    return credential, signed.split(";"), given


class NonceCache:
    """Nonces seen, each kept until its request's date leaves the accepted window.

    Bounded by time (entries expire) and by count: past ``max_entries`` a request is
    refused (ServiceBusy) rather than a nonce forgotten early, which would allow a replay.
    """

    def __init__(self, max_entries: int = MAX_NONCES):
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._order: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, nonce: str, expires_at: float, now: float) -> bool:
        """Remember ``nonce`` until ``expires_at``; False if it is remembered already."""
        self._expire(now)
        if nonce in self._expiry:
            return False
        if len(self._expiry) >= self.max_entries:
            raise ServiceUnavailable(
                f"more than {self.max_entries} signed requests within "
                f"{2 * MAX_CLOCK_SKEW_S} s; try again shortly",
                code="ServiceBusy",
            )
        self._expiry[nonce] = expires_at
        self._order.append((expires_at, nonce))
        return True

    def _expire(self, now: float) -> None:
        # Roughly ordered by expiry (dates are close to arrival): an entry stuck behind a
        # later one is kept a little longer, never dropped early.
        order, expiry = self._order, self._expiry
        while order and order[0][0] <= now:
            _, nonce = order.popleft()
            expiry.pop(nonce, None)


class Verifier:
    """Checks one request's ACS3-HMAC-SHA256 signature against the configured keys."""

    def __init__(
        self,
        keys: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
        max_skew_s: float = MAX_CLOCK_SKEW_S,
        nonces: NonceCache | None = None,
    ):
        self._keys = dict(keys)
        self._clock = clock
        self.max_skew_s = max_skew_s
        self.nonces = nonces or NonceCache()

    @property
    def key_count(self) -> int:
        return len(self._keys)

    def verify(
        self,
        method: str,
        raw_path: str,
        query: Iterable[tuple[str, str]],
        headers: Headers,
        body: bytes,
    ) -> str:
        """The access key id that signed this request, or AccessDenied saying why not."""
        authorization = headers.get("Authorization")
        if not authorization:
            raise AccessDenied(
                f"the request is not signed: send an {ALGORITHM} Authorization header "
                "(the official Function Compute SDKs do)"
            )
        key_id, signed_headers, given = parse_authorization(authorization)
        secret = self._keys.get(key_id)
        if secret is None:
            raise AccessDenied(f"invalid access key ID '{key_id}'", code="InvalidAccessKeyID")
        self._check_signed_headers(headers, signed_headers)
        date = self._check_date(headers[DATE_HEADER])
        body_hash = hashlib.sha256(body).hexdigest()
        if headers.get(CONTENT_HASH_HEADER, body_hash) != body_hash:
            raise AccessDenied(
                f"{CONTENT_HASH_HEADER} does not match the body", code="SignatureNotMatch"
            )
        canonical = canonical_request(method, raw_path, query, headers, signed_headers, body_hash)
        if not hmac.compare_digest(signature(secret, canonical), given):
            raise AccessDenied(
                "The request signature we calculated does not match the signature you "
                "provided. Check your access key and signing method",
                code="SignatureNotMatch",
            )
        if not self.nonces.add(headers[NONCE_HEADER], date + self.max_skew_s, self._clock()):
            raise AccessDenied(
                f"{NONCE_HEADER} was used already: every request needs a new one",
                code="SignatureNonceUsed",
            )
        return key_id

    def _check_signed_headers(self, headers: Headers, signed_headers: list[str]) -> None:
        signed = set(signed_headers)
        for required in (DATE_HEADER, NONCE_HEADER):
            if required not in signed or required not in headers:
                raise AccessDenied(f"the {required} header is required and must be signed")
        for name in headers:
            lower = name.lower()
            if lower.startswith(_MUST_SIGN_PREFIX) and lower not in signed:
                raise AccessDenied(f"the {lower} header must be signed")
        for name in signed_headers:
            if name != name.lower() or name not in headers:
                raise AccessDenied(
                    f"signed header {name!r} is not in the request (names are lower case)",
                    code="SignatureNotMatch",
                )

    def _check_date(self, raw: str) -> float:
        try:
            date = float(calendar.timegm(time.strptime(raw, DATE_FORMAT)))
        except ValueError:
            raise AccessDenied(
                f"{DATE_HEADER} must look like 2023-03-30T12:00:00Z (UTC), got {raw!r}"
            ) from None
        skew = abs(self._clock() - date)
        if skew > self.max_skew_s:
            raise AccessDenied(
                f"{DATE_HEADER} {raw} is {skew:.0f} s away from the gateway's clock "
                f"(at most {self.max_skew_s:.0f} s): check the client's clock",
                code="RequestTimeTooSkewed",
            )
        return date
