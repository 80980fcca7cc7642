"""The request signatures of Function Compute 2.0's SDKs, verified.

Three schemes reach the 2016-08-15 and 2021-04-06 paths; the Authorization header's first
word says which:

``FC <id>:<signature>`` (``aliyun-fc2``, ``fc-go-sdk``: 2016-08-15)::

    string to sign = METHOD \\n content-md5 \\n content-type \\n date \\n
                     x-fc-* headers ("name:value\\n", names lower-cased, sorted) + RESOURCE
    signature      = base64(HMAC-SHA256(secret, string to sign))

  RESOURCE is the path; with its queries it is ``path \\n k=v \\n ...`` (sorted), the form
  of FC's signed URLs. Both SDKs sign API calls by their path alone, so a signature over
  the path alone is accepted too, and then the query is not covered: the listing filters
  of ListStatefulAsyncInvocations are the only queries these paths read.

``acs <id>:<signature>`` (the Tea SDK ``alibabacloud_fc_open20210406`` with
``signature_algorithm="v2"``: its ROA signature, ``alibabacloud_openapi_util``)::

    string to sign = METHOD \\n accept \\n content-md5 \\n content-type \\n date \\n
                     x-acs-* headers ("name:value\\n", sorted) + path[?k=v&k2...]
    signature      = base64(HMAC-SHA1(secret, string to sign))

  with ``x-acs-signature-method: HMAC-SHA1``, ``x-acs-signature-version: 1.0`` and an
  ``x-acs-signature-nonce``, accepted once (the caller checks it with
  ``auth.refuse_replay``).

``ACS3-HMAC-SHA256`` (the same Tea SDK by default): ``auth.Verifier``, as on 2023-03-30.

Both FC 2.0 schemes: the ``Date`` header (RFC 1123) must be within ``MAX_CLOCK_SKEW_S``
of the gateway's clock, and a ``Content-MD5`` that is sent must be the body's (hex, as the
Go SDK sends it, or base64). The FC scheme has no nonce: a captured request can be sent
again while its date is fresh, as against FC 2.0 itself. Written by hand (hmac, hashlib)
for the reason ``auth`` gives: the SDKs only sign.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from email.utils import parsedate_to_datetime

from asyncinvoke.gateway.auth import (
    ALGORITHM as ACS3_ALGORITHM,
)
from asyncinvoke.gateway.auth import (
    MAX_CLOCK_SKEW_S,
    NONCE_HEADER,
    NONCE_RE,
    Headers,
    SignedRequest,
    Verifier,
)
from asyncinvoke.gateway.fcapi import AccessDenied

FC_SCHEME = "FC"
ROA_SCHEME = "acs"
FC_HEADER_PREFIX = "x-fc-"
ACS_HEADER_PREFIX = "x-acs-"
ROA_METHOD = "HMAC-SHA1"
ROA_VERSION = "1.0"
SECURITY_TOKEN = "x-fc-security-token"

_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your access key and signing method"
)


def fc_string_to_sign(
    method: str, headers: Headers, resource: str
) -> str:
    """The FC scheme's string to sign for ``resource``."""
    signed = sorted(
        (name.lower(), value) for name, value in headers.items()
        if name.lower().startswith(FC_HEADER_PREFIX)
    )
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in signed)
    return "\n".join(
        (
            method,
            headers.get("Content-MD5", ""),
            headers.get("Content-Type", ""),
            headers.get("Date", ""),
            canonical_headers + resource,
        )
    )


def fc_resources(path: str, raw_path: str, query: list[tuple[str, str]]) -> list[str]:
    """What an FC-scheme client may have signed as the resource: the path as sent or
    decoded (the Go SDK signs it escaped, the Python SDK unescaped), each alone or with
    its queries."""
    resources = []
    for candidate in dict.fromkeys((path, raw_path)):
        if query:
            resources.append(candidate + "\n" + "\n".join(sorted(f"{k}={v}" for k, v in query)))
        resources.append(candidate)
    return resources


def roa_string_to_sign(method: str, raw_path: str, query: list[tuple[str, str]],
                       headers: Headers) -> str:
    """The ROA string to sign (the Tea SDK's ``get_string_to_sign``)."""
    signed = sorted(
        (name.lower(), value) for name, value in headers.items()
        if name.lower().startswith(ACS_HEADER_PREFIX)
    )
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in signed)
    resource = raw_path
    if query:
        resource += "?" + "&".join(k if v == "" else f"{k}={v}" for k, v in sorted(query))
    return "\n".join(
        (
            method,
            headers.get("Accept", ""),
            headers.get("Content-MD5", ""),
            headers.get("Content-Type", ""),
            headers.get("Date", ""),
            canonical_headers + resource,
        )
    )


def _digest(secret: str, text: str, algorithm: str) -> bytes:
    # aiohttp decodes header bytes that are not UTF-8 with surrogateescape: sign what was sent.
    mac = hmac.new(secret.encode(), text.encode("utf-8", "surrogateescape"), algorithm)
    return base64.b64encode(mac.digest())


class Fc2Verifier:
    """Checks one request to a 2016-08-15 or 2021-04-06 path against the configured keys,
    in whichever of the three schemes it is signed."""

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
        self._acs3 = Verifier(keys, clock=clock, max_skew_s=max_skew_s)

    def verify(
        self,
        method: str,
        path: str,
        raw_path: str,
        query: Iterable[tuple[str, str]],
        headers: Headers,
        body: bytes,
    ) -> SignedRequest | None:
        """The request, checked; or AccessDenied saying why not. A SignedRequest whose
        nonce the caller must check (ROA, ACS3), or None (the FC scheme has no nonce)."""
        authorization = headers.get("Authorization")
        if not authorization:
            raise AccessDenied(
                "the request is not signed: send an Authorization header (FC 2.0's SDKs "
                "sign every request with the access key)"
            )
        scheme, _, credentials = authorization.strip().partition(" ")
        pairs = list(query)
        if scheme == ACS3_ALGORITHM:
            return self._acs3.verify(method, raw_path, pairs, headers, body)
        if scheme not in (FC_SCHEME, ROA_SCHEME):
            raise AccessDenied(
                f"the Authorization header must be 'FC ID:SIGNATURE' (2016-08-15 SDKs), "
                f"'acs ID:SIGNATURE' (ROA) or {ACS3_ALGORITHM}, got scheme {scheme[:40]!r}"
            )
        key_id, _, given = credentials.strip().partition(":")
        secret = self._keys.get(key_id)
        if secret is None:
            raise AccessDenied(f"invalid access key ID '{key_id}'", code="InvalidAccessKeyID")
        if SECURITY_TOKEN in headers or "x-acs-security-token" in headers:
            raise AccessDenied("STS security tokens are not supported: sign with an access key")
        date = self._check_date(headers)
        _check_content_md5(headers, body)
        _refuse_repeated_signed_headers(headers)
        given_bytes = given.encode("utf-8", "surrogateescape")
        if scheme == FC_SCHEME:
            candidates = [
                _digest(secret, fc_string_to_sign(method, headers, resource), "sha256")
                for resource in fc_resources(path, raw_path, pairs)
            ]
            if not any(hmac.compare_digest(c, given_bytes) for c in candidates):
                raise AccessDenied(_MISMATCH, code="SignatureNotMatch")
            return None
        return self._verify_roa(secret, key_id, method, raw_path, pairs, headers,
                                given_bytes, date)

    def _verify_roa(
        self,
        secret: str,
        key_id: str,
        method: str,
        raw_path: str,
        query: list[tuple[str, str]],
        headers: Headers,
        given: bytes,
        date: float,
    ) -> SignedRequest:
        if headers.get("x-acs-signature-method") != ROA_METHOD or headers.get(
            "x-acs-signature-version"
        ) != ROA_VERSION:
            raise AccessDenied(
                f"an 'acs' signature needs x-acs-signature-method: {ROA_METHOD} and "
                f"x-acs-signature-version: {ROA_VERSION}"
            )
        nonce = headers.get(NONCE_HEADER, "")
        if not NONCE_RE.fullmatch(nonce):
            raise AccessDenied(
                f"{NONCE_HEADER} is required: 1 to 128 printable ASCII characters (the SDK "
                "sends a random token)"
            )
        if len({name for name, _ in query}) != len(query):
            raise AccessDenied("a query parameter is sent twice; send each once")
        expected = _digest(secret, roa_string_to_sign(method, raw_path, query, headers), "sha1")
        if not hmac.compare_digest(expected, given):
            raise AccessDenied(_MISMATCH, code="SignatureNotMatch")
        return SignedRequest(key_id, nonce, round((date + self.max_skew_s) * 1000))

    def _check_date(self, headers: Headers) -> float:
        raw = headers.get("Date", "")
        try:
            parsed = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise AccessDenied(
                f"the Date header must be an HTTP date such as 'Mon, 30 Nov 2026 12:00:00 "
                f"GMT', got {raw[:64]!r}"
            )
        date = parsed.timestamp()
        skew = abs(self._clock() - date)
        if skew > self.max_skew_s:
            raise AccessDenied(
                f"Date {raw} is {skew:.0f} s away from the gateway's clock (at most "
                f"{self.max_skew_s:.0f} s): check the client's clock",
                code="RequestTimeTooSkewed",
            )
        return date


_SIGNED_NAMES = frozenset({"accept", "content-md5", "content-type", "date", "authorization"})


def _refuse_repeated_signed_headers(headers: Headers) -> None:
    """A signed header sent twice: which value was signed would be the gateway's guess."""
    seen: set[str] = set()
    for name, _ in headers.items():  # iterating the names would skip repeats
        lower = name.lower()
        if lower in _SIGNED_NAMES or lower.startswith((FC_HEADER_PREFIX, ACS_HEADER_PREFIX)):
            if lower in seen:
                raise AccessDenied(f"the {lower} header is sent twice; send it once")
            seen.add(lower)


def _check_content_md5(headers: Headers, body: bytes) -> None:
    given = headers.get("Content-MD5")
    if given is None:
        return
    digest = hashlib.md5(body, usedforsecurity=False).digest()
    if given.strip() not in (digest.hex(), digest.hex().upper(), base64.b64encode(digest).decode()):
        raise AccessDenied("Content-MD5 does not match the body", code="InvalidDigest")
