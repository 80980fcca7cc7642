"""Where each quorum queue lives on a cluster: its leader and its members.

AMQP does not tell; ``rabbitmqctl list_queues name leader members`` does, run on a host
that can reach the node (it needs the node's Erlang cookie). ``topology show
--rabbitmq-node NODE`` asks that way; without rabbitmqctl, or when the node does not
answer, a ``PlacementUnknown`` says why.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import orjson

from asyncinvoke.errors import PlacementUnknown

RABBITMQCTL_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Placement:
    leader: str
    members: tuple[str, ...]


def parse(listing: bytes) -> dict[str, Placement]:
    """``rabbitmqctl list_queues name leader members --formatter json`` → by queue name.
    A classic queue has no leader or members there, and is left out."""
    placements = {}
    for row in orjson.loads(listing or b"[]"):
        leader, members = row.get("leader"), row.get("members")
        if isinstance(leader, str) and leader and isinstance(members, list):
            placements[str(row["name"])] = Placement(leader, tuple(sorted(map(str, members))))
    return placements


def run_cli(argv: list[str], what: str) -> str:
    """Run a RabbitMQ CLI tool (``rabbitmqctl``, ``rabbitmq-queues``) against a node; its
    output, or a ``PlacementUnknown`` that says why ``what`` is unknown."""
    if shutil.which(argv[0]) is None:
        raise PlacementUnknown(f"{argv[0]} is not installed here: {what} unknown")
    try:
        done = subprocess.run(argv, capture_output=True, timeout=RABBITMQCTL_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise PlacementUnknown(f"{' '.join(argv[:4])}: no answer within "
                               f"{RABBITMQCTL_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise PlacementUnknown(f"{' '.join(argv[:5])} failed: "
                               f"{reason[0] if reason else done.returncode}")
    return done.stdout.decode(errors="replace")


def queue_placement(node: str, vhost: str = "/") -> dict[str, Placement]:
    """Ask ``node`` (rabbitmqctl's -n) for the leader and members of each queue of ``vhost``."""
    return parse(run_cli(["rabbitmqctl", "-q", "-n", node, "list_queues", "-p", vhost,
                          "name", "leader", "members", "--formatter", "json"],
                         "leaders and members").encode())
