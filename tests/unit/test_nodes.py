"""The broker URL list: parsing, refusing a bad list, and the order nodes are tried in."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke import Client, SyncClient
from asyncinvoke.errors import ConfigError
from asyncinvoke.nodes import NodeRing, parse_nodes
from asyncinvoke.settings import from_env

ROOT = Path(__file__).resolve().parents[2]
THREE = (
    "amqp://u:secret@10.0.0.1:5672/prod,"
    " amqp://u:secret@10.0.0.2:5672/prod ,"
    "amqp://u:secret@10.0.0.3/prod"
)


def test_one_url_is_a_cluster_of_one() -> None:
    (node,) = parse_nodes("amqp://guest:guest@127.0.0.1:5672/")
    assert node.url == "amqp://guest:guest@127.0.0.1:5672/"
    assert node.vhost == "/"


def test_a_list_keeps_its_order_and_drops_the_spaces_around_items() -> None:
    nodes = parse_nodes(THREE)
    assert [node.url.split("@")[1] for node in nodes] == [
        "10.0.0.1:5672/prod",
        "10.0.0.2:5672/prod",
        "10.0.0.3/prod",
    ]
    assert {node.vhost for node in nodes} == {"prod"}


def test_a_node_is_shown_without_its_password() -> None:
    shown = [node.shown for node in parse_nodes(THREE)]
    assert shown[0] == "amqp://u:***@10.0.0.1:5672/prod"
    assert all("secret" not in url for url in shown)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "item 1 is empty"),
        ("amqp://a/,,amqp://b/", "item 2 is empty"),
        ("amqp://a/,", "item 2 is empty"),
        ("amqp://a/, ", "item 2 is empty"),
        ("amqp://a/,http://b/", "item 2 (http://b/): unknown scheme 'http'"),
        ("127.0.0.1:5672", "unknown scheme"),
        ("amqp://a/x,amqp://b/y", "mixes virtual hosts ('x', 'y')"),
        ("amqp://a,amqp://b/%2F,amqp://c/", ""),  # all three name the default vhost "/"
        ("amqp://a/,amqps://b/", "mixes amqp:// and amqps://"),
        ("amqp://a:1/,amqp://a:1/", "more than once"),
        ("amqp://a:port/", "item 1 (amqp://a:port/)"),
        ("amqp:///", "no host"),
    ],
)
def test_a_bad_list_is_a_configuration_error_that_names_the_item(text: str, says: str) -> None:
    if not says:
        assert len(parse_nodes(text)) == 3
        return
    with pytest.raises(ConfigError, match="ASYNCINVOKE_AMQP_URL") as caught:
        parse_nodes(text)
    assert says in str(caught.value)


def test_a_bad_item_is_named_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_nodes("amqp://u:hunter2@a/,ftp://u:hunter2@b/")
    assert "hunter2" not in str(caught.value)
    assert "ftp://u:***@b/" in str(caught.value)


def test_the_environment_is_checked_at_start() -> None:
    with pytest.raises(ConfigError, match="item 2 is empty"):
        from_env({"ASYNCINVOKE_AMQP_URL": "amqp://a/,"})
    assert from_env({"ASYNCINVOKE_AMQP_URL": THREE}).amqp_url == THREE


def test_the_clients_refuse_a_bad_list_when_made_not_at_first_use() -> None:
    for make in (Client, SyncClient):
        with pytest.raises(ConfigError, match="mixes virtual hosts"):
            make(url="amqp://u:p@a/x,amqp://u:p@b/y")


@pytest.mark.parametrize("command", [["worker"], ["gateway"], ["serve"], ["dlq", "stats"]])
def test_every_command_refuses_a_bad_list_at_start(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asyncinvoke", *command, "--config", "examples/functions.toml"]
        if command[0] != "dlq" else [sys.executable, "-m", "asyncinvoke", *command],
        env={**os.environ, "ASYNCINVOKE_AMQP_URL": "amqp://u:hunter2@a/,ftp://u:hunter2@b/"},
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode != 0
    assert "item 2 (ftp://u:***@b/): unknown scheme 'ftp'" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_a_ring_tries_every_node_once_from_its_start() -> None:
    ring = NodeRing(parse_nodes(THREE), start=1)
    assert [node.url for node in ring.in_order()] == [
        parse_nodes(THREE)[i].url for i in (1, 2, 0)
    ]


@given(st.integers(min_value=1, max_value=7), st.integers(min_value=0, max_value=50),
       st.integers(min_value=0, max_value=30))
def test_advancing_visits_the_nodes_in_turn_and_wraps(count: int, start: int, steps: int) -> None:
    nodes = parse_nodes(",".join(f"amqp://n{i}/" for i in range(count)))
    ring = NodeRing(nodes, start=start)
    for _ in range(steps):
        ring.advance()
    assert ring.current == nodes[(start + steps) % count]
    assert sorted(node.url for node in ring.in_order()) == sorted(node.url for node in nodes)


def test_processes_start_spread_over_the_nodes() -> None:
    nodes = parse_nodes(THREE)
    starts = Counter(NodeRing(nodes).position for _ in range(3000))
    assert set(starts) == {0, 1, 2}
    assert min(starts.values()) > 800  # about 1,000 each; random, with a wide margin
