"""FC 2.0's routes (2016-08-15 and 2021-04-06), served by the gateway's one implementation.

Each handler finds the function through its service (``fc2api``), then calls what the
2023-03-30 routes call (``operations``) and answers in FC 2.0's shapes. The gateway's
middleware checks the signature (``auth2``) and writes errors in FC 2.0's JSON for these
paths.

Put/Delete of the async config join here when live configuration exists: a handler each,
over the implementation the 2023-03-30 routes use, with the shapes in ``fc2api``. The
trigger routes are ``triggerroutes``' own, given this face's function lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from asyncinvoke.functions import FunctionSpec
from asyncinvoke.gateway import fc2api, fcapi
from asyncinvoke.gateway.fcapi import JSON
from asyncinvoke.gateway.triggerroutes import TriggerRoutes
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
        service = fc2api.split_service(
            request.match_info["service"], request.query.get("qualifier")
        )
        return fc2api.find_function(
            self.gateway.specs, self.services, service, request.match_info["fn"]
        )

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

    async def get_async_config(self, request: web.Request) -> web.Response:
        spec = self._spec(request)
        gateway = self.gateway
        return _json(fc2api.async_config(spec, gateway.names, gateway.config_modified_ms))

    async def list_async_configs(self, request: web.Request) -> web.Response:
        """A function's configs, one per qualifier: here only LATEST's."""
        spec = self._spec(request)
        gateway = self.gateway
        config = fc2api.async_config(spec, gateway.names, gateway.config_modified_ms)
        return _json({"configs": [config]})


def _json(value: object) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type=JSON)
