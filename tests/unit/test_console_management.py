"""Where the console finds RabbitMQ's management API, and what it says when the API does
not answer (against a closed port and a real HTTP server that refuses; the real API is
tested in tests/console/test_unacked.py)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from asyncinvoke.console.management import Endpoint, Management, endpoint
from asyncinvoke.errors import ConfigError, ManagementUnavailable
from asyncinvoke.settings import Settings, from_env


def test_the_api_is_derived_from_the_amqp_url_with_its_user_and_vhost() -> None:
    where = endpoint(Settings(amqp_url="amqp://ops:s%40cret@rabbit.example:5672/prod%2Fa"))
    assert where == Endpoint("http://rabbit.example:15672", "ops", "s@cret", "prod/a", False)


def test_amqps_derives_https_on_15671_and_the_default_vhost() -> None:
    where = endpoint(Settings(amqp_url="amqps://u:p@mq:5671/"))
    assert (where.base, where.vhost) == ("https://mq:15671", "/")


def test_a_configured_url_wins_and_its_credentials_are_kept_off_the_shown_address() -> None:
    settings = Settings(
        amqp_url="amqp://app:app@mq/", management_url="https://mon:watch@mgmt:443/rabbit/"
    )
    where = endpoint(settings)
    assert where == Endpoint("https://mgmt:443/rabbit", "mon", "watch", "/", True)


def test_a_configured_url_without_a_user_takes_the_amqp_one() -> None:
    where = endpoint(Settings(amqp_url="amqp://app:pw@mq/", management_url="http://mgmt:15672"))
    assert (where.user, where.password, where.base) == ("app", "pw", "http://mgmt:15672")


def test_a_management_url_that_is_not_http_is_refused_at_start_without_its_password() -> None:
    with pytest.raises(ConfigError, match="ASYNCINVOKE_MANAGEMENT_URL") as caught:
        from_env({"ASYNCINVOKE_MANAGEMENT_URL": "amqp://u:secret@mq:5672/"})
    assert "secret" not in str(caught.value)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_api_that_does_not_answer_is_reported_and_not_asked_again_at_once() -> None:
    port = _closed_port()
    management = Management(Endpoint(f"http://127.0.0.1:{port}", "g", "g", "/", False))
    try:
        with pytest.raises(ManagementUnavailable, match=f"127.0.0.1:{port} did not answer"):
            await management.unacked("ns.fn.")
        # Within RETRY_AFTER_S the same reason comes back without a request.
        with pytest.raises(ManagementUnavailable, match="did not answer"):
            await management.unacked("ns.fn.")
    finally:
        await management.close()


@pytest.fixture
async def refusing_api() -> AsyncIterator[str]:
    """401 for user 'app'; for any other user, 200 with what is not the API's answer."""

    async def refuse(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") == "Basic YXBwOnB3":  # app:pw
            return web.json_response({"error": "not_authorized"}, status=401)
        return web.json_response(["not", "a", "page"])

    app = web.Application()
    app.router.add_get("/api/queues/{vhost}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_refused_login_names_the_user_and_the_tag_it_needs(refusing_api: str) -> None:
    management = Management(Endpoint(refusing_api, "app", "pw", "/", True))
    try:
        with pytest.raises(ManagementUnavailable, match=r"refused user 'app'.*'monitoring' tag"):
            await management.unacked("ns.fn.")
    finally:
        await management.close()


async def test_an_answer_that_is_not_the_apis_is_reported_not_raised(refusing_api: str) -> None:
    management = Management(Endpoint(refusing_api, "other", "pw", "/", True))
    try:
        with pytest.raises(ManagementUnavailable, match="did not answer as RabbitMQ's"):
            await management.unacked("ns.fn.")
    finally:
        await management.close()
