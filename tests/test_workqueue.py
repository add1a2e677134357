"""kvtool.kube.workqueue: keys retried with backoff, one at a time, re-run when dirty, resynced, never dropped."""

from __future__ import annotations

import asyncio
import itertools

from kvtool.kube.workqueue import WorkQueue


def run(coro):  # each test its own loop: the queue's timers live in it
    return asyncio.run(coro)


async def until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_a_failing_key_is_retried_with_growing_backoff_until_it_succeeds() -> None:
    async def main() -> None:
        calls: list[float] = []
        loop = asyncio.get_running_loop()

        async def process(key: str) -> None:
            calls.append(loop.time())
            if len(calls) < 4:
                raise RuntimeError("apiserver said 500")

        q: WorkQueue[str] = WorkQueue("t", process, base_delay=0.02, max_delay=1.0)
        q.start()
        q.add("vm-a")
        await until(lambda: len(calls) == 4)
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08, gaps
        await until(lambda: "vm-a" not in q.failures)
        await q.stop()

    run(main())


def test_one_key_is_never_processed_twice_at_once_and_an_add_meanwhile_runs_it_again() -> None:
    async def main() -> None:
        running: set[str] = set()
        overlaps: list[str] = []
        done: list[str] = []
        release = asyncio.Event()

        async def process(key: str) -> None:
            if key in running:
                overlaps.append(key)
            running.add(key)
            if not done:
                await release.wait()
            running.discard(key)
            done.append(key)

        q: WorkQueue[str] = WorkQueue("t", process, workers=4)
        q.start()
        q.add("k")
        await until(lambda: "k" in running)
        q.add("k")  # while it runs: marked dirty, not started in parallel
        q.add("k")  # deduplicated
        release.set()
        await until(lambda: len(done) == 2)
        assert done == ["k", "k"] and not overlaps
        await q.stop()

    run(main())


def test_a_sync_may_ask_to_run_again_later_and_resync_readds_every_key() -> None:
    async def main() -> None:
        seen: list[str] = []

        async def process(key: str) -> float | None:
            seen.append(key)
            return 0.05 if key == "later" and seen.count("later") == 1 else None

        q: WorkQueue[str] = WorkQueue("t", process, resync=0.1, keys=lambda: ["a", "b"])
        q.start()
        q.add("later")
        await until(lambda: seen.count("later") == 2)
        await until(lambda: seen.count("a") >= 2 and seen.count("b") >= 2)
        await q.stop()
        assert not q.tasks and not q.timers

    run(main())
