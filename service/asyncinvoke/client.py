"""The producer API: ``Client.invoke`` and ``Client.invoke_many``.

``invoke`` returns only after the broker confirmed the message. Before the first
publish for a function the client checks once that its queue exists, so a typo
in a function name is an exception here rather than a failure record later.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import uuid4

from asyncinvoke import contract, dispatch, topology
from asyncinvoke.broker import Broker
from asyncinvoke.contract import Envelope
from asyncinvoke.errors import AsyncInvokeError, InvalidMessage
from asyncinvoke.settings import Settings, from_env

DEFAULT_WINDOW = 1000  # publishes in flight in invoke_many


class UnknownFunctionError(AsyncInvokeError):
    def __init__(self, function: str, namespace: str):
        super().__init__(
            f"function {function!r} has no queue in namespace {namespace!r}: start a worker "
            f"whose functions file has it, or run 'asyncinvoke topology declare'"
        )
        self.function = function


class InvokeManyError(AsyncInvokeError):
    """Some publishes of an invoke_many failed; ``accepted`` were confirmed."""

    def __init__(self, accepted: list[str], failed: dict[str, BaseException]):
        first_id, first_error = next(iter(failed.items()))
        super().__init__(
            f"{len(failed)} of {len(accepted) + len(failed)} invocations were not accepted "
            f"(first: {first_id}: {first_error})"
        )
        self.accepted = accepted
        self.failed = failed


def new_id() -> str:
    return "i" + uuid4().hex


class Client:
    def __init__(
        self,
        url: str | None = None,
        namespace: str | None = None,
        *,
        settings: Settings | None = None,
    ):
        base = settings or from_env()
        self.settings = base.with_overrides(amqp_url=url, namespace=namespace)
        self.names = topology.Names(self.settings.namespace)
        self.broker = Broker(self.settings, name=f"asyncinvoke-client-{os.getpid()}")
        self._known_functions: set[str] = set()

    async def connect(self) -> None:
        await self.broker.connect()

    async def close(self) -> None:
        await self.broker.close()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def envelope(
        self,
        function: str,
        payload: Any = None,
        *,
        delay: float = 0,
        id: str | None = None,
        task: bool | None = None,
        meta: Mapping[str, str] | None = None,
        now_ms: int | None = None,
    ) -> tuple[Envelope, bytes]:
        """Build and validate one envelope; InvalidMessage says what is wrong.

        ``delay`` is in seconds and may have a fraction: the wire's ``delay`` is whole
        seconds, so a fractional delay travels as the service's own due time (ms).
        """
        created_at = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        wire: dict[str, Any] = {
            "v": contract.VERSION,
            "id": id if id is not None else new_id(),
            "fn": function,
            "payload": payload,
            "created_at": created_at,
        }
        if delay:
            if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
                raise InvalidMessage(
                    f"delay must be between 0 and {self.settings.max_delay_s} seconds, "
                    f"got {delay!r}"
                )
            wire["delay"] = math.ceil(delay)
            if delay != int(delay):
                wire["due_at"] = created_at + round(delay * 1000)
        if task is not None:
            wire["task"] = task
        if meta:
            wire["meta"] = dict(meta)
        envelope = contract.from_wire(
            wire, received_at_ms=created_at, max_delay_s=self.settings.max_delay_s
        )
        try:
            body = contract.encode(envelope)
        except (TypeError, ValueError) as exc:
            raise InvalidMessage(f"payload cannot be encoded as msgpack: {exc}") from None
        if len(body) > self.settings.max_payload_bytes:
            raise InvalidMessage(
                f"invocation {envelope.id} is {len(body)} bytes, over the limit of "
                f"{self.settings.max_payload_bytes} (ASYNCINVOKE_MAX_PAYLOAD_BYTES)"
            )
        return envelope, body

    async def ensure_function(self, function: str) -> None:
        if function in self._known_functions:
            return
        assert self.broker.connection is not None, "use 'async with Client()' or connect()"
        depth = await topology.queue_depth(
            self.broker.connection, self.names.function_queue(function)
        )
        if depth is None:
            raise UnknownFunctionError(function, self.names.ns)
        self._known_functions.add(function)

    async def invoke(
        self,
        function: str,
        payload: Any = None,
        *,
        delay: float = 0,
        id: str | None = None,
        task: bool | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> str:
        """Hand over one invocation; returns its id once the broker confirmed it."""
        envelope, body = self.envelope(function, payload, delay=delay, id=id, task=task, meta=meta)
        await self.ensure_function(function)
        await dispatch.send(self.broker, self.names, envelope, envelope.created_at, body)
        return envelope.id

    async def invoke_many(
        self,
        invocations: Iterable[tuple[str, Any]],
        *,
        delay: float = 0,
        window: int = DEFAULT_WINDOW,
    ) -> list[str]:
        """Hand over many invocations with up to ``window`` publishes in flight.

        Returns the ids in order once every publish was confirmed. If some fail,
        raises InvokeManyError listing the accepted and the failed ids.
        """
        now = time.time_ns() // 1_000_000
        built = [
            self.envelope(function, payload, delay=delay, now_ms=now)
            for function, payload in invocations
        ]
        for function in {envelope.fn for envelope, _ in built}:
            await self.ensure_function(function)
        failed: dict[str, BaseException] = {}
        semaphore = asyncio.Semaphore(window)

        async def one(envelope: Envelope, body: bytes) -> None:
            async with semaphore:
                try:
                    await dispatch.send(self.broker, self.names, envelope, now, body)
                except AsyncInvokeError as exc:
                    failed[envelope.id] = exc

        await asyncio.gather(*(one(envelope, body) for envelope, body in built))
        ids = [envelope.id for envelope, _ in built]
        if failed:
            raise InvokeManyError([i for i in ids if i not in failed], failed)
        return ids
