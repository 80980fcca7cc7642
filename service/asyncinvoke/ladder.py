"""The delay ladder: whole seconds of delay ↔ routing keys and bindings.

Level L (0..16) is a topic exchange and a quorum queue whose fixed TTL is 2^L s.
A delayed message's routing key spells the delay's 17 bits, most significant
first, then the function name: ``0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.1.resize`` is
11 s. The message enters at the top level's exchange; at each level a binding on
its bit either parks it in that level's queue (bit 1) or passes it down to the
next level's exchange (bit 0). A queue dead-letters expired messages to the next
level's exchange with the routing key unchanged, and level 0 hands over to the
deliver exchange, which routes on the function name. A delay therefore waits
exactly the sum of its set bits, each level holding one fixed TTL so expiry
stays in FIFO order (a per-message TTL would wait behind a longer one).
"""

from __future__ import annotations

LEVELS = 17
MAX_DELAY_S: int = (1 << LEVELS) - 1  # 131071 s, the ladder's reach


def routing_key(delay_s: int, function: str) -> str:
    """The routing key that makes ``function``'s message wait ``delay_s`` seconds."""
    if not 0 <= delay_s <= MAX_DELAY_S:
        raise ValueError(f"delay {delay_s} s is outside the ladder's reach 0..{MAX_DELAY_S}")
    bits = format(delay_s, f"0{LEVELS}b")
    return ".".join(bits) + "." + function


def _bit_pattern(level: int, bit: str) -> str:
    """Topic pattern matching keys whose bit for ``level`` is ``bit``."""
    position = LEVELS - 1 - level  # the most significant bit comes first
    return ".".join(["*"] * position + [bit]) + ".#"


def park_pattern(level: int) -> str:
    """Binding from level's exchange to its queue: this bit is set."""
    return _bit_pattern(level, "1")


def pass_pattern(level: int) -> str:
    """Binding from level's exchange to the next level down: this bit is clear."""
    return _bit_pattern(level, "0")


def deliver_pattern(function: str) -> str:
    """Binding from the deliver exchange to a function's queue."""
    return "#." + function


# An invocation leaves the ladder at least this long before it is due. On its way in
# and through the levels the broker adds latency (tens of milliseconds under a burst on a
# busy host); the worker that receives it holds what is left, so it starts on time
# rather than late by that latency.
LEAD_MS = 50
HOLD_LIMIT_MS = 1000 + LEAD_MS  # a worker holds less than this (the bottom level is 1 s)


def seconds_to_wait(remaining_ms: int) -> int:
    """Whole seconds an invocation due in ``remaining_ms`` waits in the ladder (0: none).

    They end at least LEAD_MS before it is due, never after; what is left, from LEAD_MS
    to just under HOLD_LIMIT_MS, the worker that receives it holds.
    """
    if remaining_ms < HOLD_LIMIT_MS:
        return 0
    return min((remaining_ms - LEAD_MS) // 1000, MAX_DELAY_S)


def entry_level(delay_s: int) -> int:
    """The level a delay enters at: its highest set bit. The levels above would only pass
    it down (exchange-to-exchange hops that halve the broker's publish rate)."""
    return delay_s.bit_length() - 1
