"""FC 3.0's live-configuration routes (2023-03-30), over ``operations.ConfigOperations``:

    PUT|GET|DELETE /2023-03-30/functions/{fn}/async-invoke-config   (?qualifier=LATEST)
    GET            /2023-03-30/async-invoke-configs                 (functionName, limit,
                                                                      nextToken)
    PUT|GET|DELETE /2023-03-30/functions/{fn}/concurrency
    GET            /2023-03-30/concurrency-configs                  (functionName, limit,
                                                                      nextToken)

Answers are FC's AsyncConfig, ListAsyncInvokeConfigsOutput, ConcurrencyConfig and
ListConcurrencyConfigsOutput; our own details (the configuration version, each field's
source, the pause) ride under ``asyncinvoke``, which FC's SDKs ignore.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from asyncinvoke.gateway import fcapi
from asyncinvoke.gateway.fcapi import JSON
from asyncinvoke.liveconfig import model
from asyncinvoke.liveconfig.model import Effective

if TYPE_CHECKING:
    from asyncinvoke.gateway.app import Gateway

ROOT = f"/{fcapi.API_VERSION}"


def async_config(gateway: Gateway, live: Effective) -> dict[str, Any]:
    """FC's AsyncConfig of the configuration in force."""
    file_ms = gateway.live.file_modified_ms
    config = fcapi.async_config(live.spec, gateway.names, file_ms)
    config.update(model.times(live.async_config, file_ms))
    config["asyncinvoke"] = {
        **config["asyncinvoke"],
        "configVersion": live.version,
        "paused": live.paused,
        "sources": dict(live.sources),
    }
    return config


class ConfigRoutes:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def routes(self) -> list[web.RouteDef]:
        base = fcapi.API_PREFIX + "/{fn}"
        return [
            web.put(base + "/async-invoke-config", self.put_async, name="PutAsyncInvokeConfig"),
            web.get(base + "/async-invoke-config", self.get_async, name="GetAsyncInvokeConfig"),
            web.delete(
                base + "/async-invoke-config", self.delete_async, name="DeleteAsyncInvokeConfig"
            ),
            web.get(ROOT + "/async-invoke-configs", self.list_async, name="ListAsyncInvokeConfigs"),
            web.put(base + "/concurrency", self.put_concurrency, name="PutConcurrencyConfig"),
            web.get(base + "/concurrency", self.get_concurrency, name="GetConcurrencyConfig"),
            web.delete(
                base + "/concurrency", self.delete_concurrency, name="DeleteConcurrencyConfig"
            ),
            web.get(
                ROOT + "/concurrency-configs", self.list_concurrency, name="ListConcurrencyConfigs"
            ),
        ]

    # -- async-invoke config -------------------------------------------------------------

    async def put_async(self, request: web.Request) -> web.Response:
        live = await self.gateway.config.put_async_config(
            request.match_info["fn"], await request.read(), request.query.get("qualifier")
        )
        return _json(async_config(self.gateway, live))

    async def get_async(self, request: web.Request) -> web.Response:
        model.check_qualifier(request.query.get("qualifier"))
        live = self.gateway.config.effective(request.match_info["fn"])
        return _json(async_config(self.gateway, live))

    async def delete_async(self, request: web.Request) -> web.Response:
        await self.gateway.config.delete_async_config(
            request.match_info["fn"], request.query.get("qualifier")
        )
        return web.Response(status=204)

    async def list_async(self, request: web.Request) -> web.Response:
        query = request.query
        page, next_token = self.gateway.config.list_async_configs(
            query.get("functionName"), query.get("limit"), query.get("nextToken")
        )
        output: dict[str, Any] = {"configs": [async_config(self.gateway, live) for live in page]}
        if next_token:
            output["nextToken"] = next_token
        return _json(output)

    # -- concurrency ---------------------------------------------------------------------

    def _concurrency(self, live: Effective) -> dict[str, Any]:
        arn = fcapi.function_arn(self.gateway.names, live.spec.name)
        return model.concurrency_output(arn, live.spec.name, live)

    async def put_concurrency(self, request: web.Request) -> web.Response:
        live = await self.gateway.config.put_concurrency(
            request.match_info["fn"], await request.read()
        )
        return _json(self._concurrency(live))

    async def get_concurrency(self, request: web.Request) -> web.Response:
        return _json(self._concurrency(self.gateway.config.effective(request.match_info["fn"])))

    async def delete_concurrency(self, request: web.Request) -> web.Response:
        await self.gateway.config.delete_concurrency(request.match_info["fn"])
        return web.Response(status=204)

    async def list_concurrency(self, request: web.Request) -> web.Response:
        query = request.query
        page, next_token = self.gateway.config.list_async_configs(
            query.get("functionName"), query.get("limit"), query.get("nextToken")
        )
        output: dict[str, Any] = {"configs": [self._concurrency(live) for live in page]}
        if next_token:
            output["nextToken"] = next_token
        return _json(output)


def _json(value: object) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type=JSON)
