"""FC 2.0's signatures verified, with the SDKs' own signing code as the oracle:
``fc2.auth.Auth`` (aliyun-fc2, the FC scheme) and ``alibabacloud_openapi_util``'s ROA
string to sign and signature (the Tea SDK's ``acs`` scheme)."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import types

import pytest
from alibabacloud_openapi_util.client import Client as RoaUtil
from fc2.auth import Auth
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from asyncinvoke.gateway.auth import SignedRequest
from asyncinvoke.gateway.auth2 import Fc2Verifier
from asyncinvoke.gateway.fcapi import AccessDenied

NOW = 1_700_000_000.0
KEY_ID, SECRET = "fc-key", "fc-s3cr3t"
PATH = "/2016-08-15/services/shop/functions/echo/invocations"


def verifier(now: float = NOW) -> Fc2Verifier:
    return Fc2Verifier({KEY_ID: SECRET}, clock=lambda: now)


def proxy(headers: dict[str, str] | list[tuple[str, str]]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(headers))


def fc_signed(
    method: str = "POST",
    path: str = PATH,
    body: bytes = b"{}",
    *,
    extra: dict[str, str] | None = None,
    queries: dict[str, str] | None = None,
    secret: str = SECRET,
    date: float = NOW,
) -> dict[str, str]:
    """The headers aliyun-fc2 sends, signed by its own Auth.sign_request."""
    headers = {
        "host": "127.0.0.1:9000",
        "date": email.utils.formatdate(date, usegmt=True),
        "content-type": "application/json",
        "content-length": str(len(body)),
        "x-fc-invocation-type": "Async",
        **(extra or {}),
    }
    headers["authorization"] = Auth(KEY_ID, secret).sign_request(method, path, headers, queries)
    return headers


def verify_fc(
    headers: dict[str, str],
    method: str = "POST",
    body: bytes = b"{}",
    query: list[tuple[str, str]] | None = None,
    now: float = NOW,
) -> SignedRequest | None:
    return verifier(now).verify(method, PATH, PATH, query or [], proxy(headers), body)


def refusal(headers: dict[str, str], **kwargs: object) -> AccessDenied:
    with pytest.raises(AccessDenied) as caught:
        verify_fc(headers, **kwargs)  # type: ignore[arg-type]
    return caught.value


# -- the FC scheme (2016-08-15) ------------------------------------------------------------


def test_an_fc_signature_of_the_python_sdk_is_accepted_and_has_no_nonce() -> None:
    assert verify_fc(fc_signed(extra={"x-fc-async-delay": "2"})) is None


@given(st.text(alphabet="abcdefghij0123456789-_", min_size=1, max_size=20))
def test_any_x_fc_header_value_signed_by_the_sdk_is_accepted(value: str) -> None:
    assert verify_fc(fc_signed(extra={"x-fc-trace-id": value})) is None


def test_a_changed_or_added_x_fc_header_breaks_the_signature() -> None:
    headers = fc_signed(extra={"x-fc-async-delay": "200"})
    assert refusal({**headers, "x-fc-async-delay": "0"}).code == "SignatureNotMatch"
    added = {**headers, "x-fc-stateful-async-invocation-id": "mine"}
    assert refusal(added).code == "SignatureNotMatch"


def test_another_method_path_or_secret_breaks_the_signature() -> None:
    assert refusal(fc_signed(), method="PUT").code == "SignatureNotMatch"
    assert refusal(fc_signed(secret="guess")).code == "SignatureNotMatch"
    other_path = fc_signed(path=PATH.replace("echo", "other"))
    assert refusal(other_path).code == "SignatureNotMatch"


def test_the_date_must_be_within_15_minutes() -> None:
    assert verify_fc(fc_signed(date=NOW - 14 * 60)) is None
    assert refusal(fc_signed(date=NOW - 16 * 60)).code == "RequestTimeTooSkewed"
    assert refusal(fc_signed(date=NOW + 16 * 60)).code == "RequestTimeTooSkewed"
    garbled = fc_signed()
    garbled["date"] = "yesterday"
    assert "HTTP date" in refusal(garbled).message


def test_a_content_md5_sent_must_be_the_bodys_in_hex_or_base64() -> None:
    digest = hashlib.md5(b"{}").digest()
    for given_md5 in (digest.hex(), base64.b64encode(digest).decode()):
        assert verify_fc(fc_signed(extra={"content-md5": given_md5})) is None
    wrong = fc_signed(extra={"content-md5": hashlib.md5(b"other").hexdigest()})
    assert refusal(wrong).code == "InvalidDigest"


def test_queries_signed_as_fc_signed_urls_are_checked() -> None:
    headers = fc_signed(method="GET", queries={"limit": "5", "status": "Failed"})
    query = [("status", "Failed"), ("limit", "5")]
    assert verify_fc(headers, method="GET", query=query) is None
    changed = [("status", "Succeeded"), ("limit", "5")]
    assert refusal(headers, method="GET", query=changed).code == "SignatureNotMatch"


def test_unsigned_unknown_or_token_bearing_requests_are_refused() -> None:
    headers = fc_signed()
    unsigned = {k: v for k, v in headers.items() if k != "authorization"}
    assert "not signed" in refusal(unsigned).message
    unknown = {**headers, "authorization": headers["authorization"].replace(KEY_ID, "who")}
    assert refusal(unknown).code == "InvalidAccessKeyID"
    token = fc_signed(extra={"x-fc-security-token": "sts"})
    assert "STS" in refusal(token).message
    other_scheme = {**headers, "authorization": "Basic dXNlcjpwYXNz"}
    assert "Authorization header must be" in refusal(other_scheme).message


def test_a_signed_header_sent_twice_is_refused() -> None:
    headers = fc_signed(extra={"x-fc-async-delay": "2"})
    twice = [*headers.items(), ("x-fc-async-delay", "0")]
    with pytest.raises(AccessDenied, match="sent twice"):
        verifier().verify("POST", PATH, PATH, [], proxy(twice), b"{}")


# -- the ROA scheme (the Tea SDK's signature v2) -------------------------------------------


def roa_signed(
    method: str = "GET",
    query: dict[str, str] | None = None,
    *,
    secret: str = SECRET,
    nonce: str = "nonce-1",
    date: float = NOW,
) -> dict[str, str]:
    """The headers the Tea SDK sends with signature_algorithm="v2", signed by its util."""
    headers = {
        "date": email.utils.formatdate(date, usegmt=True),
        "host": "127.0.0.1:9000",
        "accept": "application/json",
        "x-acs-signature-nonce": nonce,
        "x-acs-signature-method": "HMAC-SHA1",
        "x-acs-signature-version": "1.0",
        "x-acs-version": "2021-04-06",
        "x-acs-action": "GetStatefulAsyncInvocation",
        "user-agent": "AlibabaCloud",
    }
    request = types.SimpleNamespace(
        method=method, pathname=PATH, headers=headers, query=query or {}
    )
    signature = RoaUtil.get_roasignature(RoaUtil.get_string_to_sign(request), secret)
    headers["authorization"] = f"acs {KEY_ID}:{signature}"
    return headers


def verify_roa(
    headers: dict[str, str], method: str = "GET", query: list[tuple[str, str]] | None = None
) -> SignedRequest | None:
    return verifier().verify(method, PATH, PATH, query or [], proxy(headers), b"")


def test_a_roa_signature_of_the_tea_sdk_is_accepted_with_its_nonce() -> None:
    signed = verify_roa(roa_signed(query={"qualifier": "LATEST", "limit": "3"}),
                        query=[("qualifier", "LATEST"), ("limit", "3")])
    assert signed == SignedRequest(KEY_ID, "nonce-1", round((NOW + 900) * 1000))


def test_a_roa_signature_covers_query_and_x_acs_headers() -> None:
    headers = roa_signed(query={"status": "Failed"})
    with pytest.raises(AccessDenied, match="does not match"):
        verify_roa(headers, query=[("status", "Succeeded")])
    with pytest.raises(AccessDenied, match="does not match"):
        verify_roa({**headers, "x-acs-action": "StopStatefulAsyncInvocation"},
                   query=[("status", "Failed")])
    with pytest.raises(AccessDenied, match="twice"):
        verify_roa(headers, query=[("status", "Failed"), ("status", "Failed")])


def test_a_roa_request_needs_its_nonce_method_and_version() -> None:
    headers = roa_signed()
    with pytest.raises(AccessDenied, match="x-acs-signature-nonce"):
        verify_roa({k: v for k, v in headers.items() if k != "x-acs-signature-nonce"})
    with pytest.raises(AccessDenied, match="HMAC-SHA1"):
        verify_roa({**headers, "x-acs-signature-method": "HMAC-SHA256"})
    with pytest.raises(AccessDenied) as stale:
        verify_roa(roa_signed(date=NOW - 3600))
    assert stale.value.code == "RequestTimeTooSkewed"
