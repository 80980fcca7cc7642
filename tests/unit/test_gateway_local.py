"""The keyless gateway's guard against web pages: which Host and Origin values are this
machine's loopback, and which invocations a plain HTML form could have sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from asyncinvoke.gateway.fcapi import AccessDenied
from asyncinvoke.gateway.local import (
    check_unsigned_invocation,
    check_unsigned_request,
    host_of,
    is_loopback,
)


def headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({name.replace("_", "-"): v for name, v in values.items()}))


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("127.0.0.1:9000", "127.0.0.1"),
        ("localhost", "localhost"),
        ("[::1]:9000", "::1"),
        ("[::1]", "::1"),
        ("[::1", None),
        ("[::1]x", None),
        ("127.0.0.1:90:00", None),
        ("127.0.0.1:", None),
        ("127.0.0.1:123456", None),
        ("127.0.0.1:٩٠", None),
    ],
)
def test_the_host_of_an_authority_is_found_or_the_shape_refused(
    authority: str, host: str | None
) -> None:
    assert host_of(authority) == host


@pytest.mark.parametrize("host", ["localhost", "LocalHost", "127.0.0.1", "127.255.0.9", "::1"])
def test_loopback_names_and_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    ["", "0.0.0.0", "10.0.0.1", "::", "localhost.evil.example", "127.0.0.1.nip.io", "evil"],
)
def test_everything_else_is_not_loopback(host: str) -> None:
    assert not is_loopback(host)


@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}\.(example|com|io)", fullmatch=True))
def test_a_request_addressed_to_any_domain_name_is_refused(name: str) -> None:
    with pytest.raises(AccessDenied, match="ASYNCINVOKE_ACCESS_KEYS"):
        check_unsigned_request("/2023-03-30/functions/f/async-tasks", headers(Host=name))


def test_a_request_without_host_is_refused_but_probes_are_answered() -> None:
    with pytest.raises(AccessDenied):
        check_unsigned_request("/metrics", headers())
    check_unsigned_request("/healthz", headers(Host="evil.example"))
    check_unsigned_request("/readyz", headers())


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:3000", True),
        ("https://127.0.0.1", True),
        ("http://[::1]:8080", True),
        ("http://evil.example", False),
        ("null", False),
        ("chrome-extension://abcdef", False),
        ("http://localhost.evil.example", False),
        ("http://127.0.0.1/path", False),
    ],
)
def test_only_a_loopback_origin_is_answered(origin: str, allowed: bool) -> None:
    request = headers(Host="127.0.0.1:9000", Origin=origin)
    if allowed:
        check_unsigned_request("/2023-03-30/functions/f/invocations", request)
    else:
        with pytest.raises(AccessDenied, match="Origin"):
            check_unsigned_request("/2023-03-30/functions/f/invocations", request)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""],
)
def test_an_invocation_a_form_could_send_is_refused(content_type: str) -> None:
    with pytest.raises(AccessDenied, match="x-fc-invocation-type"):
        check_unsigned_invocation(headers(), content_type)


@pytest.mark.parametrize("content_type", ["application/json", "application/cloudevents+json"])
def test_a_json_invocation_or_one_that_names_its_type_is_answered(content_type: str) -> None:
    check_unsigned_invocation(headers(), content_type)
    check_unsigned_invocation(headers(X_FC_Invocation_Type="Async"), "text/plain")
