"""FC 2.0's routes (2016-08-15 and 2021-04-06), served by the gateway's one implementation.

Each handler finds the function through its service (``fc2api``), then calls what the
2023-03-30 routes call (``operations``) and answers in FC 2.0's shapes. The gateway's
middleware checks the signature (``auth2``) and writes errors in FC 2.0's JSON for these
paths.

Put/Get/Delete/List of the async config are here over the implementation the 2023-03-30
routes use (``operations.ConfigOperations``), in FC 2.0's shapes (``statefulInvocation``
is task mode). FC 2.0 has no per-function concurrency config (its on-demand and
provisioned configs are about instances), so pause and resume are 2023-03-30 routes only.
The trigger routes are ``triggerroutes``' own, given this face's function lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from asyncinvoke.functions import FunctionSpec
from asyncinvoke.gateway import fc2api, fcapi
from asyncinvoke.gateway.fcapi import JSON
from asyncinvoke.gateway.triggerroutes import TriggerRoutes
from asyncinvoke.liveconfig import model
from asyncinvoke.liveconfig.model import Effective
from asyncinvoke.tasks.store import Task

if TYPE_CHECKING:
    from asyncinvoke.gateway.app import Gateway

INVOKE = "FC2.InvokeFunction"
# The routes that take invocations, which the keyless guard checks (gateway.local).
INVOKE_ROUTES = frozenset({"InvokeFunction", INVOKE})


class Fc2Routes:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.services = frozenset(spec.service for spec in gateway.specs.values())

    def routes(self) -> list[web.RouteDef]:
        version = "/{version:" + fc2api.VERSION_PATTERN + "}"
        base = version + "/services/{service}/functions/{fn}"
        invocation = base + "/stateful-async-invocations/{invocation_id}"
        return [
            web.post(base + "/invocations", self.invoke, name=INVOKE),
            web.get(
                base + "/stateful-async-invocations",
                self.list_invocations,
                name="FC2.ListStatefulAsyncInvocations",
            ),
            web.get(invocation, self.get_invocation, name="FC2.GetStatefulAsyncInvocation"),
            web.put(invocation, self.stop_invocation, name="FC2.StopStatefulAsyncInvocation"),
            web.get(
                version + "/stateful-async-invocation-functions",
                self.list_functions,
                name="FC2.ListStatefulAsyncInvocationFunctions",
            ),
            web.get(
                base + "/async-invoke-config",
                self.get_async_config,
                name="FC2.GetFunctionAsyncInvokeConfig",
            ),
            web.put(
                base + "/async-invoke-config",
                self.put_async_config,
                name="FC2.PutFunctionAsyncInvokeConfig",
            ),
            web.delete(
                base + "/async-invoke-config",
                self.delete_async_config,
                name="FC2.DeleteFunctionAsyncInvokeConfig",
            ),
            web.get(
                base + "/async-invoke-configs",
                self.list_async_configs,
                name="FC2.ListFunctionAsyncInvokeConfigs",
            ),
            *TriggerRoutes(
                self.gateway,
                self.gateway.triggers,
                base=base + "/triggers",
                find=self._spec,
                config_as_text=False,
                route_prefix="FC2.",
            ).routes(),
        ]

    def _spec(self, request: web.Request) -> FunctionSpec:
        """The function the path names, with the live configuration in force now."""
        service = fc2api.split_service(
            request.match_info["service"], request.query.get("qualifier")
        )
        spec = fc2api.find_function(
            self.gateway.specs, self.services, service, request.match_info["fn"]
        )
        return self.gateway.live.effective(spec.name).spec

    async def _task(self, request: web.Request) -> tuple[FunctionSpec, Task]:
        spec = self._spec(request)
        invocation_id = request.match_info["invocation_id"]
        task = await self.gateway.operations.find_task(spec, invocation_id)
        if task is None:
            raise fc2api.invocation_not_found(spec.service, spec.name, invocation_id)
        return spec, task

    # -- InvokeFunction ----------------------------------------------------------------

    async def invoke(self, request: web.Request) -> web.Response:
        spec = self._spec(request)
        invocation = fc2api.parse_invocation(request.headers, self.gateway.settings.max_delay_s)
        body = await request.read()
        try:
            return await self.gateway.operations.invoke(spec, invocation, body)
        except fcapi.Conflict:
            raise fcapi.Conflict(
                f"{fc2api.STATEFUL_ID} '{invocation.task_id}': a stateful async invocation "
                "with this id exists already; every invocation needs an id of its own",
                code="StatefulAsyncInvocationAlreadyExists",
            ) from None

    # -- stateful async invocations ----------------------------------------------------

    async def get_invocation(self, request: web.Request) -> web.Response:
        spec, task = await self._task(request)
        return _json(fc2api.stateful_invocation(task, spec.service))

    async def list_invocations(self, request: web.Request) -> web.Response:
        spec = self._spec(request)
        query = fc2api.parse_list_query(request.query)
        page = await self.gateway.operations.list_page(spec, query)
        return _json(fc2api.list_output(page, spec.service, query.include_payload))

    async def stop_invocation(self, request: web.Request) -> web.Response:
        _, task = await self._task(request)
        await self.gateway.operations.stop(task, "StatefulAsyncInvocationFinished")
        return web.Response(status=200)

    async def list_functions(self, request: web.Request) -> web.Response:
        return _json(fc2api.stateful_functions(self.gateway.specs.values(), request.query))

    # -- Get/ListFunctionAsyncInvokeConfig(s) --------------------------------------------

    def _async_config(self, live: Effective) -> dict[str, object]:
        gateway = self.gateway
        file_ms = gateway.live.file_modified_ms
        config = fc2api.async_config(live.spec, gateway.names, file_ms)
        config.update(model.times(live.async_config, file_ms))
        config["asyncinvoke"] = {
            **config["asyncinvoke"],
            "configVersion": live.version,
            "paused": live.paused,
            "sources": dict(live.sources),
        }
        return config

    async def get_async_config(self, request: web.Request) -> web.Response:
        spec = self._spec(request)
        return _json(self._async_config(self.gateway.config.effective(spec.name)))

    async def put_async_config(self, request: web.Request) -> web.Response:
        spec = self._spec(request)  # the qualifier was checked with the service
        live = await self.gateway.config.put_async_config(
            spec.name, await request.read(), None, stateful_key="statefulInvocation"
        )
        return _json(self._async_config(live))

    async def delete_async_config(self, request: web.Request) -> web.Response:
        spec = self._spec(request)
        await self.gateway.config.delete_async_config(spec.name, None)
        return web.Response(status=204)

    async def list_async_configs(self, request: web.Request) -> web.Response:
        """A function's configs, one per qualifier: here only LATEST's."""
        spec = self._spec(request)
        return _json({"configs": [self._async_config(self.gateway.config.effective(spec.name))]})


def _json(value: object) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type=JSON)
