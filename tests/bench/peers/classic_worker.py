"""``asyncinvoke worker`` with classic function queues: for the latency comparison of
queue types only (``bench_queue_types``). Classic queues lose what the product needs
quorum queues for (the delivery limit, at-least-once dead-lettering), so the product
never declares them; this launcher swaps the arguments in before the command runs.

    python -m tests.bench.peers.classic_worker worker --config F
"""

from __future__ import annotations

import sys
from typing import Any

from asyncinvoke import topology
from asyncinvoke.functions import FunctionSpec


def classic_arguments(names: topology.Names, spec: FunctionSpec) -> dict[str, Any]:
    return {"x-queue-type": "classic", "x-dead-letter-exchange": names.dead}


def use_classic_queues() -> None:
    topology.function_queue_arguments = classic_arguments  # type: ignore[assignment]


if __name__ == "__main__":
    use_classic_queues()
    from asyncinvoke.cli import main

    sys.argv[0] = "asyncinvoke"
    main()
