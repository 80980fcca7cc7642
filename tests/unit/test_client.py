"""Client-side validation of an invocation: refused before anything is published."""

from __future__ import annotations

import math

import pytest

from asyncinvoke import Client
from asyncinvoke.errors import InvalidMessage
from asyncinvoke.settings import Settings

# Nothing listens here: a test that reached the broker would fail to connect, not pass.
SETTINGS = Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/")


@pytest.mark.parametrize("delay", [math.nan, math.inf, -math.inf, -1, 3601, True, "5"])
def test_a_delay_that_is_not_a_number_of_seconds_in_range_is_invalid(delay: object) -> None:
    with pytest.raises(InvalidMessage) as info:
        Client(settings=SETTINGS).envelope("resize", None, delay=delay)  # type: ignore[arg-type]
    assert "delay" in str(info.value)


@pytest.mark.parametrize("delay", [math.nan, math.inf])
async def test_invoke_refuses_a_nan_or_infinite_delay_with_invalid_message(delay: float) -> None:
    with pytest.raises(InvalidMessage):
        await Client(settings=SETTINGS).invoke("resize", None, delay=delay)


def test_a_fractional_delay_travels_as_a_due_time() -> None:
    envelope, _ = Client(settings=SETTINGS).envelope("resize", None, delay=1.5, now_ms=1000)
    assert (envelope.delay, envelope.due_at) == (2, 2500)


def test_an_integer_too_large_for_msgpack_is_invalid() -> None:
    with pytest.raises(InvalidMessage) as info:
        Client(settings=SETTINGS).envelope("resize", {"n": 2**64})
    assert "msgpack" in str(info.value)
