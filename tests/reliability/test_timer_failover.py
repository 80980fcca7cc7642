"""Timer triggers across worker processes: each tick once, a killed leader hands over,
missed ticks inside the catch-up window fire once, older ones are skipped and counted."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import aio_pika

from asyncinvoke import contract
from tests.conftest import Namespace, WorkerProcess, declare_queue, write_functions

EVERY_MS = 1000
CATCH_UP_S = 3


class Ticks:
    """Success records of the ticked function: runs per tick id, and when each tick was
    handed to the broker (the envelope's created_at)."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, queue: str):
        self.connection = connection
        self.queue = queue
        self.runs: Counter[str] = Counter()
        self.created: dict[str, int] = {}
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Ticks:
        self.channel = await self.connection.channel()
        queue = await self.channel.get_queue(self.queue, ensure=False)
        self.tag = await queue.consume(self._on_message)
        self._queue = queue
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._queue.cancel(self.tag)
        await self.channel.close()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        record = contract.unpack(message.body)
        tick_id = record["requestContext"]["requestId"]
        self.runs[tick_id] += 1
        self.created[tick_id] = record["invocation"]["created_at"]
        await message.ack()
        self._changed.set()

    def scheduled(self) -> list[int]:
        return sorted(int(tick_id.rsplit("-", 1)[1]) for tick_id in self.runs)

    async def until(self, predicate: object, timeout: float, what: str) -> None:
        assert callable(predicate)
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def leader_of(workers: list[WorkerProcess]) -> WorkerProcess:
    elected = [w for w in workers if any("trigger_leader_elected" in line for line in w.lines)]
    assert len(elected) == 1, f"{len(elected)} workers say they lead"
    return elected[0]


async def test_one_tick_per_schedule_across_three_workers_through_a_kill_9_of_the_leader(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection, tmp_path: Path
) -> None:
    results = namespace.queue_name("results")
    await declare_queue(amqp, results)
    config = write_functions(
        tmp_path,
        f"""
        [functions.tick]
        handler = "tests.support.handlers:echo"
        task_mode = true
        on_success = "queue:{results}"
        [[functions.tick.triggers]]
        name = "beat"
        type = "timer"
        cron = "@every 1s"
        payload = "p"
        """,
    )
    namespace.function_names.add("tick")
    env = {
        "ASYNCINVOKE_TASK_STORE": f"sqlite:///{tmp_path / 'tasks.db'}",
        "ASYNCINVOKE_TRIGGER_CATCH_UP": str(CATCH_UP_S),
    }
    workers = [WorkerProcess(namespace, config, **env) for _ in range(3)]
    try:
        await asyncio.gather(*(worker.start() for worker in workers))
        async with Ticks(amqp, results) as ticks:
            # Three workers: each tick once.
            await ticks.until(lambda: len(ticks.runs) >= 4, 15, "4 ticks from three workers")
            first_leader = leader_of(workers)

            # kill -9 the leader: another takes over and ticks resume.
            before = len(ticks.runs)
            killed_at = time.time_ns() // 1_000_000
            await first_leader.kill()
            await ticks.until(lambda: len(ticks.runs) >= before + 3, 15, "ticks after the kill")
            survivors = [w for w in workers if w is not first_leader]
            second_leader = leader_of(survivors)
            elected = next(
                json.loads(line) for line in second_leader.lines if "trigger_leader_elected" in line
            )
            takeover_ms = (
                round(
                    datetime.fromisoformat(elected["timestamp"].replace("Z", "+00:00")).timestamp()
                    * 1000
                )
                - killed_at
            )
            assert takeover_ms < 5000
            first_after = min(
                (created, tick_id)
                for tick_id, created in ticks.created.items()
                if created > killed_at
            )
            resumed_ms = first_after[0] - killed_at
            resumed_late_ms = first_after[0] - int(first_after[1].rsplit("-", 1)[1])
            # Bounded: the next leader takes over as soon as the broker sees the
            # connection drop, so the first tick after the kill is hardly late.
            assert resumed_ms <= EVERY_MS + 1000 and resumed_late_ms < 1000

            # Kill both survivors, leave no scheduler for ~5 s, then start one: the ticks
            # of the last CATCH_UP_S seconds fire late, once; older ones are skipped.
            for worker in survivors:
                await worker.kill()
            gap_from = time.time_ns() // 1_000_000
            await asyncio.sleep(5)
            late = WorkerProcess(namespace, config, **env)
            workers.append(late)
            await late.start()
            restarted_at = time.time_ns() // 1_000_000
            await ticks.until(
                lambda: max(ticks.scheduled()) > restarted_at + EVERY_MS,
                15,
                "ticks after the restart",
            )
            await asyncio.sleep(0.5)  # a duplicate, if any, would arrive by now

        scheduled = ticks.scheduled()
        assert all(count == 1 for count in ticks.runs.values()), ticks.runs.most_common(3)
        # No tick was handed to the broker before its time.
        for tick_id, created in ticks.created.items():
            assert created >= int(tick_id.rsplit("-", 1)[1]), tick_id
        # Every tick up to the gap, none missing; within the gap only the catch-up window's.
        missing = [
            ms
            for ms in range(scheduled[0], scheduled[-1] + 1, EVERY_MS)
            if ms not in set(scheduled)
        ]
        assert all(gap_from < ms < restarted_at - CATCH_UP_S * 1000 + EVERY_MS for ms in missing)
        caught_up = [
            ms
            for ms in scheduled
            if gap_from < ms and ticks.created[f"tick-beat-{ms}"] - ms > EVERY_MS
        ]
        assert len(caught_up) >= CATCH_UP_S - 1, (caught_up, restarted_at)
        skipped = [json.loads(line) for line in late.lines if "trigger_ticks_skipped" in line]
        assert skipped and skipped[0]["skipped"] == len(missing)
        assert second_leader is not first_leader
        print(
            f"\nnew leader elected {takeover_ms} ms after kill -9 of the leader; ticks "
            f"resumed {resumed_ms} ms after the kill (that tick "
            f"{resumed_late_ms} ms late); "
            f"{len(caught_up)} caught up, {len(missing)} skipped after a "
            f"{restarted_at - gap_from} ms gap"
        )
    finally:
        for worker in workers:
            await worker.kill()
