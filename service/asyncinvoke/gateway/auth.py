"""ACS3-HMAC-SHA256: the request signature of Alibaba Cloud's official SDKs, verified.

What the SDK signs (``alibabacloud_tea_openapi``, ``Utils.get_authorization``)::

    canonical request = METHOD \\n PATH \\n QUERY \\n HEADERS \\n SIGNED_HEADERS \\n BODY_HASH
    string to sign    = "ACS3-HMAC-SHA256" \\n hex(sha256(canonical request))
    Authorization     = ACS3-HMAC-SHA256 Credential=ID,SignedHeaders=a;b,Signature=hex(hmac)

PATH is the path as sent (percent-encoded); QUERY the parameters sorted by name, names
and values RFC 3986-encoded; HEADERS one ``name:value`` line per signed header,
lower-cased and sorted; BODY_HASH the ``x-acs-content-sha256`` header, which must be the
body's hash.

Written by hand (hmac, hashlib): the SDKs only sign, and no maintained library verifies
ACS3 on a server. Replays are refused twice over: ``x-acs-date`` must be within
``MAX_CLOCK_SKEW_S`` of our clock, and an ``x-acs-signature-nonce`` is accepted once
for as long as its date is acceptable. The nonces live in the task store, so gateways
that share a store refuse a request replayed against any of them, also after a restart.
Secrets never appear in logs or error messages.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
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
# request's date is within it, so the store holds at most 2 x this many seconds of them.
MAX_CLOCK_SKEW_S = 900
# The SDKs send a UUID-like token; anything printable up to this length is accepted, so
# a nonce is always a plain key for the store (no NUL, no surrogates, no megabytes).
NONCE_RE = re.compile(r"[\x21-\x7e]{1,128}")
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


def _encode(text: str) -> str:
    # surrogateescape: a query that was not UTF-8 is signed as the bytes it was sent as.
    return quote(text.encode("utf-8", "surrogateescape"), safe="~")


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Parameters sorted by name, then value; names and values RFC 3986-encoded, as the
    ACS3 documentation and the Java SDK do. Unencoded names would be ambiguous: the query
    ``x=1&y=2`` and one parameter named ``x=1&y`` with the value 2 would sign alike.
    (The Python and Go SDKs leave names as they are: the same for every name FC uses.)"""
    return "&".join(f"{_encode(name)}={_encode(value)}" for name, value in sorted(pairs))


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
    # aiohttp decodes header bytes that are not UTF-8 with surrogateescape: hash what was sent.
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
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


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request whose signature is right; it is accepted once its nonce is new."""

    key_id: str
    nonce: str
    nonce_expires_at_ms: int  # its date leaves the accepted window then


class NonceStore(Protocol):
    """Where nonces are remembered (the task store: see TaskStore.remember_nonce)."""

    async def remember_nonce(self, nonce: str, expires_at_ms: int, now_ms: int) -> bool: ...


async def refuse_replay(store: NonceStore, signed: SignedRequest, now_ms: int) -> None:
    """AccessDenied if ``signed``'s nonce was seen already, by this gateway or another
    that shares the store. Called only after the signature was found right, so a forged
    request cannot use up a nonce."""
    try:
        fresh = await store.remember_nonce(signed.nonce, signed.nonce_expires_at_ms, now_ms)
    except Exception as exc:  # whatever the store's driver raises: a refusal, not a 500
        raise ServiceUnavailable(
            f"the task store, which keeps the signature nonces, failed "
            f"({type(exc).__name__}); try again shortly"
        ) from exc
    if not fresh:
        raise AccessDenied(
            f"{NONCE_HEADER} was used already: every request needs a new one",
            code="SignatureNonceUsed",
        )


class Verifier:
    """Checks one request's ACS3-HMAC-SHA256 signature against the configured keys."""

    def __init__(
        self,
        keys: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
        max_skew_s: float = MAX_CLOCK_SKEW_S,
    ):
        self._keys = dict(keys)
        self._clock = clock
        self.max_skew_s = max_skew_s

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
    ) -> SignedRequest:
        """The request, checked: signed by a known key, dated now; or AccessDenied saying
        why not. Its nonce is checked apart (refuse_replay), against the shared store."""
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
        nonce = headers[NONCE_HEADER]
        if not NONCE_RE.fullmatch(nonce):
            raise AccessDenied(
                f"{NONCE_HEADER} must be 1 to 128 printable ASCII characters (the SDKs send "
                "a random token)"
            )
        canonical = canonical_request(method, raw_path, query, headers, signed_headers, body_hash)
        # compare_digest refuses str with non-ASCII characters (TypeError): compare bytes.
        given_bytes = given.encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(signature(secret, canonical).encode(), given_bytes):
            raise AccessDenied(
                "The request signature we calculated does not match the signature you "
                "provided. Check your access key and signing method",
                code="SignatureNotMatch",
            )
        expires_at_ms = round((date + self.max_skew_s) * 1000)
        return SignedRequest(key_id, nonce, expires_at_ms)

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
