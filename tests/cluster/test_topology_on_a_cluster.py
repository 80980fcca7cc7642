"""The topology on a cluster: leaders spread over the nodes, a replica on each, shown by
``topology show --rabbitmq-node``; ``topology export`` loads into the cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from tests.cluster.conftest import ClusterNamespace
from tests.conftest import ROOT, write_functions
from tests.support.cluster import NODES, node_name


def _cli(space: ClusterNamespace, *args: str, ns: str | None = None) -> str:
    env = space.env(**({"ASYNCINVOKE_NAMESPACE": ns} if ns else {}))
    done = subprocess.run([sys.executable, "-m", "asyncinvoke", *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_leaders_spread_over_the_nodes_and_topology_show_tells_where(
    cluster_namespace: ClusterNamespace,
) -> None:
    space = cluster_namespace
    config = write_functions(space.tmp_path, """
        [functions.a]
        handler = "tests.support.handlers:noop"
        [functions.b]
        handler = "tests.support.handlers:noop"
        """)
    _cli(space, "topology", "declare", "--config", str(config))
    shown = json.loads(_cli(space, "topology", "show", "--json", "--config", str(config),
                            "--rabbitmq-node", node_name(1)))
    placement = shown["placement"]
    every_node = sorted(node_name(n) for n in NODES)
    leaders = Counter(where["leader"] for where in placement.values())
    print(f"\ntopology on the cluster: {len(placement)} queues, leaders {dict(leaders)}")
    assert {space.names.function_queue("a"), space.names.failed} <= set(placement)
    assert all(where["members"] == every_node for where in placement.values())
    # Balanced: new leaders go to the nodes that lead the fewest queues (the earlier
    # tests' queues count too), never all to the node the declaring client used, as
    # 3.10's default (client-local) would.
    assert len(leaders) >= 2, leaders

    # The export is what a cluster loads (at boot, or with import_definitions).
    exported = space.tmp_path / "definitions.json"
    loaded_ns = space.ns + "x"
    _cli(space, "topology", "export", "--config", str(config), "--rabbitmq-version", "3.10",
         str(exported), ns=loaded_ns)
    # rabbitmqctl reads the file as the rabbitmq user: not from pytest's private tmp.
    readable = Path(tempfile.mkdtemp(prefix="asyncinvoke-definitions-")) / "definitions.json"
    try:
        readable.parent.chmod(0o755)
        shutil.copyfile(exported, readable)
        readable.chmod(0o644)
        space.cluster.ctl("import_definitions", str(readable))
    finally:
        shutil.rmtree(readable.parent, ignore_errors=True)
    loaded = [q for q in space.cluster.queues(loaded_ns + ".")]
    loaded_names = {str(q["name"]).replace(loaded_ns + ".", space.ns + ".", 1) for q in loaded}
    assert set(placement) <= loaded_names  # and the suspect queues, which show leaves out
    assert all(sorted(q["members"]) == every_node for q in loaded)  # type: ignore[call-overload]
    policies = json.loads(space.cluster.ctl("list_policies", "--formatter", "json"))
    assert any(p["name"] == loaded_ns + ".cluster" for p in policies), policies
