"""The namespace's durable, shared store of keyed documents, on a RabbitMQ stream.

Live function configuration (async-invoke config, concurrency) and triggers are small
JSON documents that every worker and gateway of a namespace must see alike, survive a
restart of everything, and change at run time. They live in one RabbitMQ stream,
``{ns}.config`` (``topology.Names.config_stream``), as a log of changes:

    put(kind, name, doc) ─► publish, confirmed ─► {ns}.config  (stream, replicated)
                                                   │ every store reads it from the first
                                                   ▼ offset, in order
                              state: (kind, name) → Entry   ─► subscribers (Change)

Why a stream and not the task store: the task store is optional (plain functions need
none) and per deployment (SQLite is one host); the broker is the one thing every worker
and gateway already shares. A stream is replicated on a cluster like the quorum queues,
and its log is an audit of every change for free. It is never trimmed (no retention
arguments): the log *is* the state, and a change is a few hundred bytes.

- **Order and versions.** The broker orders the writers: the log's order is the order of
  the writes, so the last write of a key wins everywhere. An entry's ``version`` is its
  message's stream offset plus one (so 0 can mean "no entry"); it increases with every
  write of the namespace, so a key's versions increase too.
- **Writes are confirmed and read back.** ``put`` and ``delete`` return once the broker
  confirmed the change *and* this store has read it back from the log, so a reader of
  the same store sees it at once; what ``put`` returns is what the store holds for the
  key at that moment, which is a later writer's document when one came after it.
- **Ready means caught up.** ``start`` reads the log to its end before it returns: a
  stream has no "end" over AMQP 0-9-1 (a stream queue's declare-ok counts 0 messages), so
  the store writes a ``sync`` marker and reads until it sees it.
- **Reconnects.** The store consumes again from the first offset after a reconnect
  (offsets already applied are skipped), if the stream still exists: ``start`` declares
  it once, and a reconnect never does (subscription.py), so a stream deleted with its
  namespace stays deleted and ``problem`` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
import msgpack

from asyncinvoke.broker import Broker
from asyncinvoke.clock import new_id, now_ms
from asyncinvoke.errors import InvalidDocument, PublishError, StoreUnavailable
from asyncinvoke.observability import get_logger
from asyncinvoke.subscription import Subscription
from asyncinvoke.topology import STREAM, Names

log = get_logger(component="docstore")

KIND_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
MAX_DOCUMENT_BYTES = 64 * 1024  # a configuration, not a payload: far below any frame limit
DEFAULT_START_TIMEOUT_S = 30.0
# The stream is read with manual acks (a stream consumer must have a prefetch and ack);
# an ack only grants credit here, nothing is removed.
PREFETCH = 200
_OFFSET = "x-stream-offset"
_PUT, _DELETE, _SYNC = "put", "delete", "sync"


@dataclass(frozen=True, slots=True)
class Entry:
    """One document as stored: ``version`` is its log offset + 1, times are epoch ms."""

    kind: str
    name: str
    document: Mapping[str, Any]
    version: int
    created_ms: int
    modified_ms: int


@dataclass(frozen=True, slots=True)
class Change:
    """One applied change, as subscribers get it: ``entry`` is None for a delete."""

    kind: str
    name: str
    version: int
    entry: Entry | None
    previous: Entry | None


Subscriber = Callable[[Change], None]
_ReadBack = tuple[int, Change | None]  # a write's version, and its change (None: a marker)


def check_key(kind: str, name: str) -> None:
    if not KIND_RE.match(kind):
        raise InvalidDocument(f"kind {kind!r} is not a store kind: {KIND_RE.pattern}")
    if not NAME_RE.match(name):
        raise InvalidDocument(f"{kind} name {name!r} must match {NAME_RE.pattern}")


def encode_change(op: str, kind: str, name: str, document: Mapping[str, Any] | None) -> bytes:
    body: dict[str, Any] = {"v": 1, "op": op, "kind": kind, "name": name, "at": now_ms()}
    if document is not None:
        body["doc"] = dict(document)
    try:
        raw: bytes = msgpack.packb(body)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidDocument(f"{kind} {name!r}: the document cannot be stored: {exc}") from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise InvalidDocument(
            f"{kind} {name!r}: the document is {len(raw)} bytes, over {MAX_DOCUMENT_BYTES}"
        )
    return raw


def apply_change(state: dict[tuple[str, str], Entry], version: int, body: bytes) -> Change | None:
    """Apply one logged change to ``state`` (pure over it); None for a marker or garbage."""
    try:
        change = msgpack.unpackb(body)
        op, kind, name, at = change["op"], change["kind"], change["name"], int(change["at"])
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        return None
    if op not in (_PUT, _DELETE) or not isinstance(kind, str) or not isinstance(name, str):
        return None
    key = (kind, name)
    previous = state.get(key)
    if op == _DELETE:
        state.pop(key, None)
        return Change(kind, name, version, None, previous)
    document = change.get("doc")
    if not isinstance(document, dict):
        return None
    entry = Entry(
        kind,
        name,
        document,
        version,
        created_ms=previous.created_ms if previous is not None else at,
        modified_ms=at,
    )
    state[key] = entry
    return Change(kind, name, version, entry, previous)


class DocumentStore:
    """A namespace's keyed documents, read from and written to ``{ns}.config``.

    ``start()`` (or ``async with``) declares the stream, reads it to its end, and keeps
    following it; ``get`` and ``list`` answer from memory; ``put`` and ``delete`` return
    once the change is confirmed and read back; ``subscribe`` hears every change.
    The broker must be connected; the store does not close it.
    """

    def __init__(self, broker: Broker, names: Names):
        self.broker = broker
        self.names = names
        self._state: dict[tuple[str, str], Entry] = {}
        self._applied = 0  # the version (offset + 1) read last
        self._subscribers: list[Subscriber] = []
        self._waiting: dict[str, asyncio.Future[_ReadBack]] = {}  # by message_id
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._subscription: Subscription | None = None

    @property
    def version(self) -> int:
        """The version of the last change read: every change up to it is applied."""
        return self._applied

    async def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        stream = self.names.config_stream
        try:
            channel = self._channel = await self.broker.channel(prefetch=PREFETCH)
            underlay = await channel.get_underlay_channel()
            await underlay.queue_declare(stream, durable=True, arguments=dict(STREAM))
            subscription = Subscription(
                channel,
                stream,
                lambda message: self._on_message(aio_pika.IncomingMessage(message)),
                arguments={_OFFSET: "first"},
            )
            await subscription.start()
            self._subscription = subscription
        except aiormq.exceptions.AMQPError as exc:
            await self.close()
            raise StoreUnavailable(
                f"cannot read the configuration stream {stream!r}: {exc}; is the broker's "
                "stream_queue feature flag on ('rabbitmqctl enable_feature_flag all')?",
                stream=stream,
            ) from None
        try:
            await self.sync(timeout_s)
        except BaseException:
            await self.close()
            raise
        log.info("docstore_ready", stream=stream, version=self._applied, keys=len(self._state))

    @property
    def problem(self) -> str | None:
        """Why the store cannot follow its stream now (deleted), for readiness; or None."""
        return self._subscription.problem if self._subscription is not None else None

    async def close(self) -> None:
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.cancel()
        if self._subscription is not None:
            self._subscription.forget()
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()
        self._channel = self._subscription = None

    async def __aenter__(self) -> DocumentStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def get(self, kind: str, name: str) -> Entry | None:
        return self._state.get((kind, name))

    def list(self, kind: str) -> list[Entry]:
        """Every entry of ``kind``, by name."""
        return sorted(
            (entry for (k, _), entry in self._state.items() if k == kind),
            key=lambda entry: entry.name,
        )

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(change)`` after every change applied from now on (in log
        order, on the event loop; it must not block). Returns the unsubscribe call."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(subscriber)

        return unsubscribe

    async def put(
        self, kind: str, name: str, document: Mapping[str, Any], timeout_s: float | None = None
    ) -> Entry:
        """Store ``document``; return what the store holds for the key once the write was
        read back: this write's entry, or a later writer's that already came after it."""
        check_key(kind, name)
        _, change = await self._write(encode_change(_PUT, kind, name, document), timeout_s)
        current = self.get(kind, name)
        if current is not None:
            return current
        # A delete came after this write and was read already: report this write as logged.
        assert change is not None and change.entry is not None
        return change.entry

    async def delete(self, kind: str, name: str, timeout_s: float | None = None) -> Entry | None:
        """Remove the key; return the entry the delete removed (None when there was none)."""
        check_key(kind, name)
        _, change = await self._write(encode_change(_DELETE, kind, name, None), timeout_s)
        return change.previous if change is not None else None

    async def sync(self, timeout_s: float | None = None) -> int:
        """Read the log up to its end as of now; return the version reached."""
        version, _ = await self._write(msgpack.packb({"v": 1, "op": _SYNC}), timeout_s)
        return version

    async def _write(self, body: bytes, timeout_s: float | None) -> _ReadBack:
        """Publish one logged change, confirmed; wait until it was read back and applied."""
        stream = self.names.config_stream
        if self._subscription is None:
            raise StoreUnavailable(
                "the configuration store is not started: call start() first", stream=stream
            )
        message_id = new_id()
        waiter: asyncio.Future[_ReadBack] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = waiter
        timeout = timeout_s if timeout_s is not None else self.broker.settings.publish_timeout_s
        try:
            await self.broker.publish("", stream, body, message_id=message_id)
            async with asyncio.timeout(timeout):
                return await waiter
        except PublishError as exc:
            raise StoreUnavailable(
                f"the change to {stream!r} was not confirmed by the broker: {exc}",
                stream=stream,
            ) from None
        except TimeoutError:
            raise StoreUnavailable(
                f"the change was confirmed but not read back from {stream!r} within "
                f"{timeout:g} s; it applies once the store reads it",
                stream=stream,
            ) from None
        finally:
            self._waiting.pop(message_id, None)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        # Applied before the first await: aiormq starts one task per delivery in order,
        # so the changes apply in log order.
        self._apply(message)
        with contextlib.suppress(Exception):  # a lost channel: the robust one reads again
            await message.ack()

    def _apply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        offset = (message.headers or {}).get(_OFFSET)
        if not isinstance(offset, int):
            return
        version = offset + 1
        if version <= self._applied:
            return  # read again after a reconnect
        self._applied = version
        change = apply_change(self._state, version, message.body)
        if change is not None:
            for subscriber in list(self._subscribers):
                try:
                    subscriber(change)
                except Exception:
                    log.exception("docstore_subscriber_failed", kind=change.kind, name=change.name)
        waiter = self._waiting.get(message.message_id or "")
        if waiter is not None and not waiter.done():
            waiter.set_result((version, change))
