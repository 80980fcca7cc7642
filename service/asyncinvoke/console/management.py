"""Unacknowledged messages per function queue, from RabbitMQ's management HTTP API.

AMQP tells a queue's *ready* messages only; the broker's count of messages delivered and
not yet acknowledged, across every worker of the namespace, is in the management
plugin's HTTP API (``GET /api/queues/VHOST``, filtered to the namespace's function
queues, one request per reading). It is the figure an operator can trust: it counts every
consumer, whatever process or host it runs in. The plugin refreshes it every
``collect_statistics_interval`` (5 s by default), so the page says it is sampled.

Where the API is: ``ASYNCINVOKE_MANAGEMENT_URL``, or else derived from the AMQP URL (its
host on port 15672, or 15671 for ``amqps``, with the AMQP user and vhost). When the API
does not answer, the console falls back to what the process it runs in knows (its own
worker's attempts in flight) and says so, with the reason; it asks the API again after
RETRY_AFTER_S, so a missing plugin costs a page nothing in between.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp

from asyncinvoke.errors import ManagementUnavailable
from asyncinvoke.settings import Settings

HTTP_PORT = 15672
HTTPS_PORT = 15671
TIMEOUT_S = 1.0  # a page waits no longer for the API
CACHE_S = 1.0  # pages refreshing together share one reading a second
RETRY_AFTER_S = 30.0  # after the API failed, it is asked again only this much later
PAGE_SIZE = 500  # the API's largest page
STATS_COLUMNS = "name,messages_unacknowledged"


@dataclass(frozen=True, slots=True)
class Endpoint:
    base: str  # without credentials: shown on the page
    user: str
    password: str
    vhost: str
    configured: bool  # from ASYNCINVOKE_MANAGEMENT_URL, not derived


def endpoint(settings: Settings) -> Endpoint:
    """Where the management API is, and with which credentials."""
    amqp = urlsplit(settings.amqp_url)
    vhost = unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
    if settings.management_url:
        given = urlsplit(settings.management_url)
        user = unquote(given.username) if given.username else unquote(amqp.username or "guest")
        password = (
            unquote(given.password)
            if given.password is not None
            else unquote(amqp.password or "guest")
        )
        host = given.hostname or "127.0.0.1"
        netloc = f"[{host}]" if ":" in host else host
        if given.port:
            netloc += f":{given.port}"
        base = urlunsplit((given.scheme or "http", netloc, given.path.rstrip("/"), "", ""))
        return Endpoint(base, user, password, vhost, configured=True)
    scheme, port = ("https", HTTPS_PORT) if amqp.scheme == "amqps" else ("http", HTTP_PORT)
    host = amqp.hostname or "127.0.0.1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Endpoint(
        f"{scheme}://{netloc}",
        unquote(amqp.username or "guest"),
        unquote(amqp.password or "guest"),
        vhost,
        configured=False,
    )


class Management:
    """Reads the unacknowledged count of every queue whose name starts with a prefix."""

    def __init__(self, where: Endpoint):
        self.where = where
        self._session: aiohttp.ClientSession | None = None
        self._cached: tuple[float, dict[str, int]] | None = None
        self._failed: tuple[float, str] | None = None

    @property
    def source(self) -> str:
        return f"RabbitMQ's management API at {self.where.base}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def unacked(self, prefix: str) -> dict[str, int]:
        """Unacknowledged messages by queue name, for the queues named ``prefix``…; a
        queue the API has no statistics for yet (declared seconds ago) is left out.
        ManagementUnavailable, with the reason, when the API did not answer (or failed
        less than RETRY_AFTER_S ago)."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CACHE_S:
            return self._cached[1]
        if self._failed is not None and now - self._failed[0] < RETRY_AFTER_S:
            raise ManagementUnavailable(self._failed[1])
        try:
            found = await self._read(prefix)
        except ManagementUnavailable as exc:
            self._failed = (now, str(exc))
            raise
        self._failed = None
        self._cached = (now, found)
        return found

    async def _read(self, prefix: str) -> dict[str, int]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": _basic_auth(self.where.user, self.where.password)},
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
            )
        url = f"{self.where.base}/api/queues/{quote(self.where.vhost, safe='')}"
        found: dict[str, int] = {}
        page = 1
        while True:
            # The API applies a name filter only to a paged listing.
            query = {
                "page": str(page), "page_size": str(PAGE_SIZE), "use_regex": "true",
                "name": "^" + re.escape(prefix), "columns": STATS_COLUMNS,
            }
            try:
                async with self._session.get(url, params=query) as response:
                    if response.status != 200:
                        raise ManagementUnavailable(_refusal(response.status, self.where))
                    body = await response.json()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                reason = str(exc) or type(exc).__name__
                raise ManagementUnavailable(f"{self.where.base} did not answer: {reason}") from None
            if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                raise ManagementUnavailable(
                    f"{self.where.base} did not answer as RabbitMQ's management API does"
                )
            for item in body["items"]:
                count = item.get("messages_unacknowledged") if isinstance(item, dict) else None
                if isinstance(count, int):
                    found[str(item.get("name"))] = count
            if page >= int(body.get("page_count", 1)):
                return found
            page += 1


def _basic_auth(user: str, password: str) -> str:
    # By hand: aiohttp deprecates BasicAuth and has its replacement only from 3.12 on.
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _refusal(status: int, where: Endpoint) -> str:
    if status == 401:
        return (
            f"{where.base} refused user {where.user!r} (HTTP 401): give a user with the "
            "'monitoring' tag in ASYNCINVOKE_MANAGEMENT_URL"
        )
    if status == 404:
        return f"{where.base} has no vhost {where.vhost!r}, or is not the management API (HTTP 404)"
    return f"{where.base} answered HTTP {status}"
