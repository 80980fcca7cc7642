"""Dead-letters that a quorum queue holds but no longer moves, and how to set them moving.

The delay ladder rests on RabbitMQ's at-least-once dead-lettering: a message whose time
in a level is up stays in that level's queue until its next stop has confirmed it. The
move is the work of one process on the queue's leader, the queue's dead-letter worker.
RabbitMQ can lose that process when a node dies: measured here on 3.10.8, after a
``kill -9`` of one node of three, about one run in three left a ladder level's leader
registered to a dead-letter worker that no longer ran (RabbitMQ's issues #7677, #15548
and #16652 describe the same end state). Nothing is lost, but the messages wait in the
queue, in no column of ``rabbitmqctl list_queues``, until the queue's leader changes;
on a healthy cluster that may be never. Delayed invocations then simply never arrive.

A new leader starts a new dead-letter worker, which takes the backlog over. So:

- ``backlog`` reads each queue's own count of dead-letters not yet confirmed by their
  target (``rabbit_fifo``'s overview on the leader, via ``rabbitmqctl eval``; AMQP and
  ``list_queues`` do not tell);
- a backlog that did not shrink over an interval is stranded (a healthy worker moves
  thousands a second; a target that is unavailable stalls it too, and then a new leader
  does no harm);
- ``move_leader`` makes the queue elect another leader by removing the leader's replica
  and adding it back (``rabbitmq-queues delete_member`` / ``add_member``): the replica
  count is what it was, and the backlog moves within a second.

``asyncinvoke topology heal --rabbitmq-node NODE`` runs these for a namespace; it needs
``rabbitmqctl`` and the node's Erlang cookie, as ``topology show --rabbitmq-node`` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from asyncinvoke.placement import queue_placement, run_cli


@dataclass(frozen=True, slots=True)
class Stranded:
    queue: str
    leader: str
    members: tuple[str, ...]
    held: int  # dead-letters held, not yet confirmed by their target


def why_not_movable(item: Stranded, running: set[str]) -> str | None:
    """Why removing ``item``'s leader replica would be unsafe now, or None. With a node
    down, a queue of three replicas left with two, one of them down, has no majority
    until that node is back; a queue of one replica has nowhere else to lead."""
    if len(item.members) < 2:
        return "one replica only: restart its node to restart its dead-letter worker"
    down = sorted(set(item.members) - running)
    if down:
        return f"replica node(s) {', '.join(down)} not running: run again once they are back"
    return None


def _binary(text: str) -> str:
    """``text`` as an Erlang binary literal of its UTF-8 bytes: nothing in a queue's name
    can reach the program as code."""
    return "<<" + ",".join(str(byte) for byte in text.encode()) + ">>"


def _program(vhost: str, queues: Iterable[str]) -> str:
    """An Erlang expression that prints ``name<TAB>held`` for each of ``queues`` that is a
    quorum queue; held = dead-lettered and not yet confirmed by the target, whether still
    waiting (``num_discarded``) or taken by the dead-letter worker
    (``num_discard_checked_out``)."""
    wanted = ",".join(_binary(queue) for queue in queues)
    return f"""
    Held = fun(Q) ->
        case catch ra:local_query(amqqueue:get_pid(Q), fun rabbit_fifo:overview/1) of
            {{ok, {{_, O}}, _}} ->
                maps:get(num_discarded, O, 0) + maps:get(num_discard_checked_out, O, 0);
            _ -> -1
        end
    end,
    VHost = {_binary(vhost)},
    Lines = [io_lib:format("~s\\t~b~n", [N, Held(Q)])
             || N <- [{wanted}],
                {{ok, Q}} <- [rabbit_amqqueue:lookup(rabbit_misc:r(VHost, queue, N))],
                amqqueue:get_type(Q) =:= rabbit_quorum_queue],
    io:format("~s", [Lines]).
    """


def parse_backlog(output: str) -> dict[str, int]:
    """``name<TAB>held`` lines → by queue name; a queue whose leader did not answer (-1)
    is left out."""
    backlog = {}
    for line in output.splitlines():
        name, _, held = line.rpartition("\t")
        if name and held.lstrip("-").isdigit() and int(held) >= 0:
            backlog[name] = int(held)
    return backlog


def backlog(node: str, vhost: str, queues: Iterable[str]) -> dict[str, int]:
    """Dead-letters each quorum queue of ``queues`` holds, not yet confirmed by its target."""
    program = _program(vhost, queues)
    return parse_backlog(run_cli(["rabbitmqctl", "-q", "-n", node, "eval", program],
                                 "dead-letter backlogs"))


def stranded(node: str, vhost: str, queues: Iterable[str], settle_s: float) -> list[Stranded]:
    """The queues whose dead-letter backlog did not shrink over ``settle_s`` seconds."""
    before = {queue: held for queue, held in backlog(node, vhost, queues).items() if held}
    if not before:
        return []
    time.sleep(settle_s)
    after = backlog(node, vhost, before)
    stuck = [queue for queue, held in after.items() if held and held >= before[queue]]
    if not stuck:
        return []
    where = queue_placement(node, vhost)
    return [
        Stranded(queue, where[queue].leader, where[queue].members, after[queue])
        if queue in where else Stranded(queue, "?", (), after[queue])
        for queue in stuck
    ]


def running_nodes(node: str) -> set[str]:
    """The cluster's running nodes, as ``node`` sees them."""
    status = run_cli(["rabbitmqctl", "-q", "-n", node, "cluster_status", "--formatter", "json"],
                     "the cluster's running nodes")
    return {str(name) for name in orjson.loads(status).get("running_nodes", [])}


def move_leader(node: str, vhost: str, queue: str, leader: str) -> None:
    """Make ``queue`` elect a leader other than ``leader``: its replica there is removed
    and added back (a new, empty replica that catches up from the new leader)."""
    for action in ("delete_member", "add_member"):
        run_cli(["rabbitmq-queues", "-q", "-n", node, action, "-p", vhost, queue, leader],
                f"{action} of {queue}")


def wait_drained(node: str, vhost: str, queues: list[str], timeout_s: float) -> dict[str, int]:
    """Wait up to ``timeout_s`` for the queues' backlogs to go; what each still holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = backlog(node, vhost, queues) if queues else {}
        if not any(held.values()) or time.monotonic() > deadline:
            return held
        time.sleep(0.5)
