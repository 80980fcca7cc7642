"""The record queues never get a delivery limit, whatever the broker's version."""

from __future__ import annotations

import re

import pytest

from asyncinvoke import topology
from asyncinvoke.functions import FunctionSpec

NAMES = topology.Names("ns")
RECORD_QUEUES = {NAMES.failed, NAMES.dead, NAMES.unrouted}
# Queues without a delivery limit that are not record queues: the timers' baton.
UNLIMITED_QUEUES = {*RECORD_QUEUES, NAMES.trigger_leader}


@pytest.mark.parametrize(
    ("announced", "parsed"),
    [
        ("3.10.8", (3, 10)),
        ("3.13.7", (3, 13)),
        ("4.0.0-rc.2", (4, 0)),
        ("4.1.4+2-g1234", (4, 1)),
        (b"4.2.0".decode(), (4, 2)),
        ("", None),
        (None, None),
        ("LavinMQ", None),
    ],
)
def test_the_announced_version_is_read_as_major_and_minor(
    announced: str | None, parsed: tuple[int, int] | None
) -> None:
    assert topology.parse_version(announced) == parsed


def test_the_server_version_comes_from_the_connections_server_properties() -> None:
    class Connection:
        server_properties = {"product": "RabbitMQ", "version": b"4.1.0"}

    assert topology.server_version(Connection()) == "4.1.0"
    assert topology.server_version(object()) is None


@pytest.mark.parametrize("version", [(4, 0), (4, 1), (5, 0)])
def test_on_rabbitmq_4_the_record_queues_are_declared_without_a_delivery_limit(
    version: tuple[int, int],
) -> None:
    # 4.x gives quorum queues a limit of 20 deliveries; only this argument lifts it.
    plan = topology.core_plan(NAMES, version)
    by_name = {queue.name: queue.arguments for queue in plan.queues}
    for name in RECORD_QUEUES:
        assert by_name[name] == {**topology.QUORUM, "x-delivery-limit": -1}


@pytest.mark.parametrize("version", [(3, 10), (3, 13), None])
def test_on_rabbitmq_3_or_an_unknown_broker_the_record_queues_get_no_limit_argument(
    version: tuple[int, int] | None,
) -> None:
    # 3.x reads a negative x-delivery-limit as 0: every record would go on its first return.
    plan = topology.core_plan(NAMES, version)
    for queue in plan.queues:
        if queue.name in RECORD_QUEUES:
            assert queue.arguments == topology.QUORUM


def test_the_function_and_ladder_queues_keep_their_own_arguments_on_4() -> None:
    spec = FunctionSpec("resize")
    old = topology.core_plan(NAMES, (3, 10)).queues + topology.functions_plan(NAMES, [spec]).queues
    new = topology.core_plan(NAMES, (4, 1)).queues + topology.functions_plan(NAMES, [spec]).queues
    for before, after in zip(old, new, strict=True):
        if before.name not in UNLIMITED_QUEUES:
            assert before == after
    assert topology.function_queue_arguments(NAMES, spec)["x-delivery-limit"] >= 0


def test_definitions_for_a_4x_broker_carry_the_unlimited_argument() -> None:
    document = topology.definitions(NAMES, [], broker_version=(4, 0))
    failed = next(queue for queue in document["queues"] if queue["name"] == NAMES.failed)
    assert failed["arguments"]["x-delivery-limit"] == -1
    legacy = topology.definitions(NAMES, [])
    failed = next(queue for queue in legacy["queues"] if queue["name"] == NAMES.failed)
    assert "x-delivery-limit" not in failed["arguments"]


def test_every_queue_places_its_leader_on_the_least_loaded_node() -> None:
    names = topology.Names("ns")
    plans = [topology.core_plan(names), topology.functions_plan(names, [FunctionSpec("f")])]
    # Every quorum queue; the configuration stream (one per namespace, little traffic)
    # keeps the broker's default.
    queues = [q for plan in plans for q in plan.queues if q.arguments["x-queue-type"] == "quorum"]
    assert queues and all(
        queue.arguments["x-queue-leader-locator"] == "balanced" for queue in queues
    )


def test_rabbitmqctl_placement_is_read_for_quorum_queues_only() -> None:
    from asyncinvoke.placement import Placement, parse

    listing = (
        b'[{"name":"ns.failed","leader":"r@b","members":["r@c","r@a","r@b"]},'
        b'{"name":"classic","leader":"","members":""}]'
    )
    assert parse(listing) == {"ns.failed": Placement("r@b", ("r@a", "r@b", "r@c"))}
    assert parse(b"") == {}


def test_definitions_carry_the_namespaces_cluster_policy() -> None:
    (policy,) = topology.definitions(NAMES, [])["policies"]
    assert policy["definition"] == {"queue-leader-locator": "balanced"}
    assert policy["apply-to"] == "queues"
    assert re.match(policy["pattern"], NAMES.failed)
    assert not re.match(policy["pattern"], NAMES.ns + "x.failed")  # another namespace


@pytest.mark.parametrize("version", [(3, 10), (4, 1)])
def test_the_trigger_leader_queue_has_one_active_consumer_and_never_drops_its_baton(
    version: tuple[int, int],
) -> None:
    plan = topology.core_plan(NAMES, version)
    leader = next(queue for queue in plan.queues if queue.name == NAMES.trigger_leader)
    assert leader.arguments["x-single-active-consumer"] is True
    assert leader.arguments.get("x-delivery-limit", -1) == -1


def test_the_queues_that_hold_state_are_the_configuration_log_and_the_timers_baton() -> None:
    plans = [
        topology.core_plan(NAMES, (4, 1)),
        topology.functions_plan(NAMES, [FunctionSpec("a"), FunctionSpec("b")]),
    ]
    holding = {queue.name for plan in plans for queue in plan.queues if queue.holds_state}
    assert holding == {NAMES.config_stream, NAMES.trigger_leader}
