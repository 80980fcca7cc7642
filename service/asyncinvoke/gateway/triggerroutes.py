"""FC's trigger API: CreateTrigger, GetTrigger, ListTriggers, UpdateTrigger, DeleteTrigger,
over the trigger definitions in the configuration store; the 2023-03-30 face, and FC 2.0's
(2016-08-15, 2021-04-06: the function found through its service, ``fc2routes``).

Shapes are FC's: a Trigger with ``triggerConfig`` as a JSON string (2023-03-30) or an
object (2.0), ``ListTriggersOutput`` with ``triggers`` and ``nextToken``. A RabbitMQ
trigger's URL is shown redacted; GetTrigger asks the source broker whether the queue can
be consumed and says ``Unhealthy`` (with ``statusReason``) when it cannot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from asyncinvoke.clock import now_ms
from asyncinvoke.errors import InvalidTrigger, StoreUnavailable, TriggerExists, TriggerNotFound
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.gateway.fcapi import (
    JSON,
    Conflict,
    FcError,
    InvalidArgument,
    NotFound,
    ServiceUnavailable,
)
from asyncinvoke.triggers import sources
from asyncinvoke.triggers.definitions import Trigger
from asyncinvoke.triggers.stored import TriggerStore

if TYPE_CHECKING:
    from asyncinvoke.gateway.app import Gateway

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def fc_error(exc: Exception) -> FcError | None:
    """The FC answer for a trigger error, None for any other."""
    if isinstance(exc, InvalidTrigger):
        return InvalidArgument(str(exc))
    if isinstance(exc, TriggerNotFound):
        return NotFound(str(exc), code="TriggerNotFound")
    if isinstance(exc, TriggerExists):
        return Conflict(str(exc), code="TriggerAlreadyExists")
    if isinstance(exc, StoreUnavailable):
        return ServiceUnavailable(f"{exc}; try again shortly")
    return None


def page(triggers: list[Trigger], limit: int, next_token: str | None) -> tuple[list[Trigger], str]:
    """One page of triggers sorted by name: those from ``next_token`` (a name) on."""
    start = [t for t in triggers if next_token is None or t.name >= next_token]
    shown = start[:limit]
    return shown, (start[limit].name if len(start) > limit else "")


BASE = "/2023-03-30/functions/{fn}/triggers"


class TriggerRoutes:
    """The five operations under ``base``; ``find`` names the function a request is about
    (2.0 finds it through its service), ``config_as_text`` is 2023-03-30's string form."""

    def __init__(
        self,
        gateway: Gateway,
        triggers: TriggerStore,
        *,
        base: str = BASE,
        find: Callable[[web.Request], FunctionSpec] | None = None,
        config_as_text: bool = True,
        route_prefix: str = "",
    ):
        self.gateway = gateway
        self.triggers = triggers
        self.base = base
        self.find = find or gateway._spec
        self.config_as_text = config_as_text
        self.route_prefix = route_prefix

    def routes(self) -> list[web.RouteDef]:
        base, prefix = self.base, self.route_prefix
        return [
            web.post(base, self.create, name=prefix + "CreateTrigger"),
            web.get(base, self.list, name=prefix + "ListTriggers"),
            web.get(base + "/{trigger}", self.get, name=prefix + "GetTrigger"),
            web.put(base + "/{trigger}", self.update, name=prefix + "UpdateTrigger"),
            web.delete(base + "/{trigger}", self.delete, name=prefix + "DeleteTrigger"),
        ]

    async def create(self, request: web.Request) -> web.Response:
        function = self.find(request).name
        trigger = await self._call(self.triggers.create(function, await _body(request), now_ms()))
        return await self._shown(trigger)

    async def list(self, request: web.Request) -> web.Response:
        function = self.find(request).name
        limit = _limit(request.query.get("limit"))
        triggers = self.triggers.list(function, request.query.get("prefix") or "")
        shown, token = page(triggers, limit, request.query.get("nextToken") or None)
        body: dict[str, Any] = {
            "triggers": [self._fc(t, "Ready" if t.enabled else "Disabled") for t in shown]
        }
        if token:
            body["nextToken"] = token
        return web.Response(body=orjson.dumps(body), content_type=JSON)

    async def get(self, request: web.Request) -> web.Response:
        function = self.find(request).name
        return await self._shown(await self._found(function, request.match_info["trigger"]))

    async def update(self, request: web.Request) -> web.Response:
        function = self.find(request).name
        name = request.match_info["trigger"]
        trigger = await self._call(
            self.triggers.update(function, name, await _body(request), now_ms())
        )
        return await self._shown(trigger)

    async def delete(self, request: web.Request) -> web.Response:
        function = self.find(request).name
        await self._call(self.triggers.delete(function, request.match_info["trigger"]))
        return web.Response(status=204)

    async def _found(self, function: str, name: str) -> Trigger:
        try:
            return self.triggers.get(function, name)
        except TriggerNotFound as exc:
            raise NotFound(str(exc), code="TriggerNotFound") from None

    async def _call(self, operation: Any) -> Trigger:
        try:
            result: Trigger = await operation
        except Exception as exc:
            error = fc_error(exc)
            if error is None:
                raise
            raise error from None
        return result

    async def _shown(self, trigger: Trigger) -> web.Response:
        state, reason = await sources.status(trigger, self.gateway.settings.amqp_url)
        return web.Response(body=orjson.dumps(self._fc(trigger, state, reason)), content_type=JSON)

    def _fc(self, trigger: Trigger, state: str, reason: str = "") -> dict[str, Any]:
        shown = trigger.to_fc(status=state, reason=reason)
        if not self.config_as_text:
            shown["triggerConfig"] = orjson.loads(shown["triggerConfig"])
        shown["targetArn"] = (
            f"acs:fc:asyncinvoke:{self.gateway.names.ns}:functions/{trigger.function}"
        )
        return shown


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return body


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)
