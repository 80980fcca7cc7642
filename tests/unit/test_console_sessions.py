"""The console's session cookie and CSRF tokens."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke.console.sessions import Signer, check_secret, signing_key

KEYS = {"k1": "secret-1", "k2": "secret-2"}
NOW = 1_800_000_000_000


def test_a_session_survives_its_cookie_until_it_expires() -> None:
    signer = Signer(signing_key(KEYS), ttl_s=60)
    session = signer.new(NOW, "k1")
    cookie = signer.dump(session)
    assert signer.load(cookie, NOW + 59_000) == session
    assert signer.load(cookie, NOW + 60_000) is None


def test_a_cookie_signed_under_other_keys_is_not_a_session() -> None:
    session = Signer(signing_key(KEYS)).new(NOW, "k1")
    cookie = Signer(signing_key(KEYS)).dump(session)
    assert Signer(signing_key(KEYS)).load(cookie, NOW) == session  # the same keys: same key
    assert Signer(signing_key({"k1": "secret-1"})).load(cookie, NOW) is None


@given(st.text(max_size=200))
def test_garbage_is_no_session(cookie: str) -> None:
    assert Signer(signing_key(KEYS)).load(cookie, NOW) is None


def test_a_changed_payload_breaks_the_signature() -> None:
    signer = Signer(signing_key(KEYS))
    body, mac = signer.dump(signer.new(NOW, None)).split(".")
    forged = signer.dump(signer.new(NOW, "k1")).split(".")[0]
    assert signer.load(f"{forged}.{mac}", NOW) is None
    assert signer.load(f"{body}.{mac}", NOW) is not None


def test_a_csrf_token_is_bound_to_its_session() -> None:
    signer = Signer(signing_key(KEYS))
    one, other = signer.new(NOW), signer.new(NOW)
    token = signer.csrf_token(one)
    assert signer.csrf_ok(one, token)
    assert not signer.csrf_ok(other, token)
    assert not signer.csrf_ok(one, None)
    assert not signer.csrf_ok(one, "")


def test_without_keys_each_process_signs_with_its_own_random_key() -> None:
    assert signing_key({}) != signing_key({})


def test_only_a_configured_pair_logs_in() -> None:
    assert check_secret(KEYS, "k1", "secret-1")
    assert not check_secret(KEYS, "k1", "secret-2")
    assert not check_secret(KEYS, "nobody", "secret-1")
    assert not check_secret({}, "", "")
