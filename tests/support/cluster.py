"""The local 3-node cluster (rabbitmq/cluster.sh), driven from tests.

``start`` runs ``cluster.sh start`` (fresh data directories; about 30-60 s on a busy
2-core machine) and ``stop`` removes the nodes again. A node is killed with ``kill -9``
of its Erlang VM, stopped cleanly, or restarted on its data (it rejoins the cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "rabbitmq" / "cluster.sh"
RABBITMQ_HOME = "/var/lib/rabbitmq"
NODES = (1, 2, 3)
START_TIMEOUT_S = 150.0
CTL_TIMEOUT_S = 60.0


class ClusterNotAvailable(Exception):
    """rabbitmq-server is missing, we are not root, or the cluster did not start."""


def node_name(n: int) -> str:
    return f"ai-cluster-{n}@localhost"


def amqp_port(n: int) -> int:
    return 5680 + n


def node_url(n: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{amqp_port(n)}/"


@dataclass
class Cluster:
    down: set[int]

    @property
    def urls(self) -> str:
        """The comma-separated list, as ASYNCINVOKE_AMQP_URL takes it."""
        return ",".join(node_url(n) for n in NODES)

    def script(self, *args: str, timeout: float = START_TIMEOUT_S) -> str:
        done = subprocess.run(
            ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"cluster.sh {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def up(self) -> list[int]:
        return [n for n in NODES if n not in self.down]

    def ctl(self, *args: str, node: int | None = None, timeout: float = CTL_TIMEOUT_S) -> str:
        """rabbitmqctl against ``node`` (default: the first node that is up)."""
        target = node if node is not None else self.up()[0]
        done = subprocess.run(
            ["rabbitmqctl", "-q", "-n", node_name(target), *args],
            capture_output=True, text=True, timeout=timeout, cwd=RABBITMQ_HOME,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {node_name(target)} {' '.join(args)}: "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def queues(self, prefix: str) -> list[dict[str, object]]:
        """name, leader, members, messages (ready + unacked) of the queues under ``prefix``."""
        out = self.ctl(
            "list_queues", "name", "leader", "members", "messages_ready",
            "messages_unacknowledged", "--formatter", "json",
        )
        return [q for q in json.loads(out or "[]") if str(q["name"]).startswith(prefix)]

    def dead_letters(self, prefix: str) -> str:
        """Each quorum queue under ``prefix`` that holds anything, by its own count
        (``rabbit_fifo``'s overview on its leader): ready, checked out, and dead-lettered
        but not yet confirmed by the dead-letter target (``num_discarded``, and
        ``num_discard_checked_out`` held by the queue's dead-letter worker). Those last
        two are in no column of ``list_queues``."""
        program = """
        Qs = [Q || Q <- rabbit_amqqueue:list(<<"/">>),
                   amqqueue:get_type(Q) =:= rabbit_quorum_queue,
                   binary:longest_common_prefix([element(4, amqqueue:get_name(Q)),
                                                 <<"PREFIX">>]) =:= byte_size(<<"PREFIX">>)],
        Keys = [num_ready_messages, num_checked_out, num_discarded, num_discard_checked_out],
        lists:flatten([begin
            Name = element(4, amqqueue:get_name(Q)),
            case catch ra:local_query(amqqueue:get_pid(Q), fun rabbit_fifo:overview/1) of
                {ok, {_, Ov}, _} ->
                    case [{K, maps:get(K, Ov, 0)} || K <- Keys, maps:get(K, Ov, 0) > 0] of
                        [] -> [];
                        Held -> io_lib:format("~s ~w; ", [Name, Held])
                    end;
                Other -> io_lib:format("~s ~w; ", [Name, Other])
            end
        end || Q <- Qs]).
        """.replace("PREFIX", prefix)
        return self.ctl("eval", program, timeout=20).strip()

    def end_dead_letter_worker(self, queue: str) -> str:
        """End ``queue``'s dead-letter worker the way RabbitMQ's supervisor ends one,
        leaving the queue's leader registered to a process that is gone: the state a
        node's death left a ladder level in (stranded.py); one already gone stays so. The
        node that ran it."""
        program = """
        {ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<"QUEUE">>)),
        {ok, {_, State}, _} = ra:local_query(amqqueue:get_pid(Q), fun(S) -> S end),
        [Dlx] = [F || F <- tuple_to_list(State), is_tuple(F), element(1, F) =:= rabbit_fifo_dlx],
        Pid = element(2, element(2, Dlx)),
        _ = rpc:call(node(Pid), supervisor, terminate_child, [rabbit_fifo_dlx_sup, Pid]),
        false = rpc:call(node(Pid), erlang, is_process_alive, [Pid]),
        node(Pid).
        """.replace("QUEUE", queue)
        return self.ctl("eval", program, timeout=20).strip()

    def leaders(self, prefix: str) -> Counter[int]:
        """How many queues under ``prefix`` each node leads."""
        by_name = {node_name(n): n for n in NODES}
        return Counter(by_name[str(q["leader"])] for q in self.queues(prefix)
                       if str(q["leader"]) in by_name)

    def running_nodes(self) -> set[int]:
        status = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        by_name = {node_name(n): n for n in NODES}
        return {by_name[name] for name in status["running_nodes"] if name in by_name}

    def kill(self, n: int) -> None:
        self.script("kill", str(n), timeout=CTL_TIMEOUT_S)
        self.down.add(n)

    def stop_node(self, n: int) -> None:
        self.script("stop", str(n), timeout=CTL_TIMEOUT_S)
        self.down.add(n)

    def restart(self, n: int) -> None:
        self.script("restart", str(n))
        self.down.discard(n)

    def stop(self) -> None:
        self.script("stop", timeout=CTL_TIMEOUT_S)


def keep() -> bool:
    """ASYNCINVOKE_CLUSTER_KEEP=1: use a cluster already running, and leave it running
    (for working on these tests; the suite itself starts a fresh one and removes it)."""
    return os.environ.get("ASYNCINVOKE_CLUSTER_KEEP") == "1"


def start() -> Cluster:
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        raise ClusterNotAvailable("rabbitmq-server / rabbitmqctl are not installed")
    if os.geteuid() != 0:
        raise ClusterNotAvailable("cluster.sh starts the nodes as the rabbitmq user: run as root")
    cluster = Cluster(down=set())
    if keep() and "down" not in cluster.script("status", timeout=CTL_TIMEOUT_S):
        return cluster
    began = time.monotonic()
    try:
        cluster.script("stop", timeout=CTL_TIMEOUT_S)  # what a killed run may have left
        cluster.script("start")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        raise ClusterNotAvailable(f"the 3-node cluster did not start: {exc}") from None
    print(f"\ncluster: 3 nodes started and joined in {time.monotonic() - began:.1f} s")
    return cluster
