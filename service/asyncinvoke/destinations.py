"""Send a record to its destination, confirmed, falling back to the failure queue.

A queue destination is published mandatory: a queue that does not exist is an
error, and the record goes to ``{ns}.failed`` with the delivery error added. A
function destination invokes that function with the record as its payload. An
HTTP destination is retried (tenacity) within a bounded time, then falls back
the same way; a redirect is never followed, and counts as a failed POST. Whatever
happens, a record ends somewhere durable before the delivery that produced it is
acknowledged.
"""

from __future__ import annotations

from dataclasses import replace
from uuid import uuid4

import aiohttp
import tenacity

from asyncinvoke import _testpoints, clock, contract, dispatch, record_codec, tracing
from asyncinvoke.broker import Broker
from asyncinvoke.contract import DeliveryError, Envelope, Record
from asyncinvoke.errors import HttpDeliveryError, PublishError, PublishTimeout
from asyncinvoke.functions import Destination
from asyncinvoke.observability import get_logger
from asyncinvoke.topology import Names

HTTP_ATTEMPTS = 4
HTTP_ATTEMPT_TIMEOUT_S = 10.0
HTTP_TOTAL_S = 30.0

log = get_logger(component="destinations")


class Destinations:
    def __init__(
        self,
        broker: Broker,
        names: Names,
        session: aiohttp.ClientSession,
        *,
        http_attempts: int = HTTP_ATTEMPTS,
        http_wait_s: float = 0.5,
    ):
        self.broker = broker
        self.names = names
        self.session = session
        self.http_attempts = http_attempts
        self.http_wait_s = http_wait_s

    async def send(self, record: Record, destination: Destination | None) -> None:
        """Deliver ``record``; None means the failure queue."""
        if destination is None:
            await self.to_failed(record)
            return
        try:
            if destination.kind == "queue":
                await self._publish_record(record, "", destination.target)
            elif destination.kind == "function":
                await self._to_function(record, destination.target)
            else:
                await self._to_http(record, destination.target)
        except PublishTimeout:
            # Transient (a connection lost mid-publish, an overloaded broker): not the
            # destination's refusal. Raised, so the delivery is returned and runs again,
            # and its record reaches the destination then.
            raise
        except (PublishError, HttpDeliveryError) as exc:
            log.warning(
                "destination_failed",
                destination=str(destination),
                invocation_id=record.request_id,
                error=str(exc),
            )
            await self.to_failed(
                replace(record, delivery_error=DeliveryError(str(destination), str(exc)))
            )

    async def to_failed(self, record: Record) -> None:
        await _testpoints.pause("failure_record")
        await self._publish_record(record, self.names.failed, record.function)

    async def _publish_record(self, record: Record, exchange: str, key: str) -> None:
        headers = {
            contract.FUNCTION_HEADER: record.function,
            contract.CONDITION_HEADER: record.condition,
        }
        with tracing.publishing(exchange or "amq.default", key):
            tracing.headers(headers)  # whoever reads the record joins the trace
            await self.broker.publish(
                exchange,
                key,
                record_codec.pack_record(record.to_wire()),
                message_id=record.request_id,
                headers=headers,
            )

    async def _to_function(self, record: Record, function: str) -> None:
        wire = record.to_wire()
        with tracing.publishing(self.names.invoke, function):
            envelope = Envelope(
                id=f"{record.request_id[:100]}_{uuid4().hex[:16]}",
                fn=function,
                payload=wire,
                created_at=clock.now_ms(),
                meta=tracing.traced_meta(
                    {"source": record.request_id, "condition": record.condition}
                ),
            )
            # The record is that function's payload: it must fit the payload limit.
            body = record_codec.encode_record(
                wire,
                lambda value: contract.encode(replace(envelope, payload=value)),
                self.broker.settings.max_payload_bytes,
            )
            tracing.describe(envelope, len(body))
            await _testpoints.pause("function_destination")
            await dispatch.send(self.broker, self.names, envelope, body)

    async def _to_http(self, record: Record, url: str) -> None:
        body = record_codec.record_json(record.to_wire())
        headers = {
            "content-type": "application/json",
            "x-fc-request-id": record.request_id,
            "x-asyncinvoke-condition": record.condition,
        }
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.http_attempts)
            | tenacity.stop_after_delay(HTTP_TOTAL_S),
            wait=tenacity.wait_exponential(multiplier=self.http_wait_s, max=5.0),
            retry=tenacity.retry_if_exception_type(HttpDeliveryError),
            reraise=True,
        )
        await _testpoints.pause("http_destination")
        async for attempt in retrying:
            with attempt:
                await self._post_once(url, body, headers)

    async def _post_once(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        timeout = aiohttp.ClientTimeout(total=HTTP_ATTEMPT_TIMEOUT_S)
        try:
            # Never follow a redirect: aiohttp would turn the POST into a GET without the
            # record (301/302/303) and count the 2xx at the end as delivered.
            with tracing.http_call(url, headers) as span:
                async with self.session.post(
                    url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as response:
                    tracing.http_status(span, response.status)
                    await self._check(url, response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HttpDeliveryError(url, str(exc) or type(exc).__name__) from None

    async def _check(self, url: str, response: aiohttp.ClientResponse) -> None:
        """A 2xx delivered the record; anything else is a failed POST."""
        if 300 <= response.status < 400:
            location = response.headers.get("Location") or "(no Location header)"
            raise HttpDeliveryError(
                url,
                f"status {response.status}: redirected to {location}, not followed "
                "(redirects never are); set the destination to the final address",
            )
        if not 200 <= response.status < 300:
            detail = (await response.read())[:300].decode("utf-8", errors="replace")
            raise HttpDeliveryError(url, f"status {response.status} {detail}".strip())
