"""live config: how long a configuration change takes to reach running workers.

    .venv/bin/python -m tests.bench.bench_live_config [--workers 2] [--trials 30]

Starts W worker processes (``asyncinvoke worker``, JSON logs), then writes T changes
through the configuration store as a gateway does (``LiveConfig.put_async_config`` and,
every other trial, a pause or a resume, which cancels or starts consumers). For every
worker and change it reads two moments from the worker's log: ``config_changed`` (the
worker heard it; from then on new attempts take it) and ``config_applied`` (its consumers
follow it: a pause is acknowledged). Both are measured from the moment the write was
sent, on one host's clock. Measured, not asserted; the issue's bound is 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from asyncinvoke.broker import Broker
from asyncinvoke.docstore import DocumentStore
from asyncinvoke.functions import load
from asyncinvoke.liveconfig.live import LiveConfig
from tests.bench.common import ROOT, Namespace, percentile, say, stop_process

FUNCTIONS = """
[functions.noop]
handler = "tests.bench.handlers:noop"
"""


def _moments(log: Path, event: str, key: str) -> dict[int, float]:
    """The store's version (``key``) → epoch seconds of the first ``event`` line."""
    found: dict[int, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if f'"event":"{event}"' not in line:
            continue
        entry = json.loads(line)
        stamp = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
        found.setdefault(int(entry[key]), stamp)
    return found


async def main(workers: int, trials: int) -> None:
    space = Namespace("liveconfig")
    workdir = Path(tempfile.mkdtemp(prefix="bench-live-"))
    config = workdir / "functions.toml"
    config.write_text(FUNCTIONS)
    logs = [workdir / f"worker{n}.log" for n in range(workers)]
    processes = []
    try:
        for log in logs:
            processes.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "asyncinvoke", "worker", "--config", str(config),
                env=space.env(), cwd=ROOT, stdout=log.open("wb"),
                stderr=asyncio.subprocess.STDOUT,
            ))
        async with asyncio.timeout(60):
            while not all('"worker_started"' in log.read_text(errors="replace") for log in logs):
                await asyncio.sleep(0.1)
        say(f"{workers} workers started; {trials} changes")
        sent: dict[int, float] = {}
        async with Broker(space.settings) as broker, DocumentStore(broker, space.names) as store:
            live = LiveConfig(store, load(config))
            for trial in range(trials):
                started = time.time()
                if trial % 2:
                    await live.put_concurrency(
                        "noop", {"reservedConcurrency": 0 if trial % 4 == 1 else 8}
                    )
                else:
                    await live.put_async_config("noop", {"maxAsyncRetryAttempts": trial % 9})
                sent[store.version] = started
                await asyncio.sleep(0.2)  # a change at a time: each one measured alone
            await asyncio.sleep(1.0)
        heard = [_moments(log, "config_changed", "version") for log in logs]
        applied = [_moments(log, "config_applied", "store_version") for log in logs]
        for name, moments in (("heard (config_changed)", heard), ("applied", applied)):
            lags = [
                (moment[version] - at) * 1000
                for moment in moments
                for version, at in sent.items()
                if version in moment
            ]
            missing = len(sent) * workers - len(lags)
            print(
                f"{name:24s} n={len(lags):3d} missing={missing} "
                f"p50={percentile(lags, 50):6.1f} ms p95={percentile(lags, 95):6.1f} ms "
                f"max={max(lags):6.1f} ms"
            )
    finally:
        for process in processes:
            await stop_process(process)
        await space.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=30)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.workers, arguments.trials))
