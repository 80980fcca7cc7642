"""The nodes of one RabbitMQ cluster: the URL list, and the order a process tries them in.

``ASYNCINVOKE_AMQP_URL`` (and ``Client(url=…)``) holds one AMQP URL or a comma-separated
list of them, one per node of one cluster. Each process starts at a position of its own
(chosen at random: under Kubernetes every process is pid 1), so connections spread over
the nodes, and moves on to the next node whenever a connection is lost or refused.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from asyncinvoke.errors import ConfigError
from asyncinvoke.settings import redact_url

SCHEMES = ("amqp", "amqps")
SETTING = "ASYNCINVOKE_AMQP_URL"


@dataclass(frozen=True, slots=True)
class Node:
    url: str
    vhost: str

    @property
    def shown(self) -> str:
        """The URL as logs, metrics and /readyz show it: without its password."""
        return redact_url(self.url)


def _vhost(path: str) -> str:
    # AMQP URI spec: no path means the server's default vhost "/"; "/x" means "x".
    return unquote(path[1:]) if len(path) > 1 else "/"


def parse_nodes(text: str, *, setting: str = SETTING) -> tuple[Node, ...]:
    """Split and check a URL list; a ConfigError names the bad item and the fix."""
    nodes: list[Node] = []
    for position, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        where = f"{setting}, item {position}"
        if not item:
            raise ConfigError(
                f"{where} is empty: give one AMQP URL, or several separated by single commas"
            )
        parts = urlsplit(item)
        if parts.scheme.lower() not in SCHEMES:
            raise ConfigError(
                f"{where} ({redact_url(item)}): unknown scheme {parts.scheme or '(none)'!r}; "
                "use amqp:// or amqps://"
            )
        try:
            host, _port = parts.hostname, parts.port
        except ValueError as exc:
            raise ConfigError(f"{where} ({redact_url(item)}): {exc}") from None
        if not host:
            raise ConfigError(f"{where} ({redact_url(item)}): no host")
        nodes.append(Node(item, _vhost(parts.path)))
    vhosts = sorted({node.vhost for node in nodes})
    if len(vhosts) > 1:
        raise ConfigError(
            f"{setting} mixes virtual hosts ({', '.join(repr(v) for v in vhosts)}): the list "
            "names the nodes of one cluster, so every URL must name the same vhost"
        )
    schemes = sorted({urlsplit(node.url).scheme.lower() for node in nodes})
    if len(schemes) > 1:
        raise ConfigError(
            f"{setting} mixes amqp:// and amqps://: use one scheme for every node"
        )
    shown = [node.shown for node in nodes]
    twice = sorted({url for url in shown if shown.count(url) > 1})
    if twice:
        raise ConfigError(f"{setting} lists {', '.join(twice)} more than once")
    return tuple(nodes)


class NodeRing:
    """Which node a process uses now, and which it tries next.

    ``start`` defaults to a random position, so the processes of one deployment
    spread their connections over the cluster.
    """

    def __init__(self, nodes: tuple[Node, ...], start: int | None = None):
        if not nodes:
            raise ValueError("a NodeRing needs at least one node")
        self.nodes = nodes
        self.position = (random.randrange(len(nodes)) if start is None else start) % len(nodes)

    @property
    def current(self) -> Node:
        return self.nodes[self.position]

    def advance(self) -> Node:
        """Move to the next node (after the last, the first) and return it."""
        self.position = (self.position + 1) % len(self.nodes)
        return self.current

    def in_order(self) -> list[Node]:
        """Every node once, the current one first: the order a first connect tries."""
        count = len(self.nodes)
        return [self.nodes[(self.position + step) % count] for step in range(count)]
