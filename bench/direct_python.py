"""falrt's own Python per direct call, without gRPC, sockets or a runner (issue 18).

    python bench/direct_python.py [--calls 16000] [--base DIR] [--rounds 3] [--profile]

The server's planes run in this process over the memory store (tests/inprocess.py: shipped
code, nothing patched), with one runner of 16 slots played in-process. Each batch makes 16
`QueueService.Run` calls (the handler as gRPC would call it, without the key check), takes
their assignments from the runner's outbox, makes them the link's messages
(`runner_link.coalesce`, serialized), answers them in one ResultBatch through
`RunnerLinkService._handle`, and serializes the 16 replies. What it times (CPU, not wall):
the handler, the scheduler, the dispatcher, the recorder, metrics, and the protobuf work of
the call and of the link; not the gRPC edge, the stream link's framing and socket writes, or
the loop's wake-ups between processes, which bench/queue_ab.py's whole-server figures
include. `--base DIR`: the same on the tree in DIR (a `git archive` of another commit), one
right after the other, `--rounds` times. `--profile`: cProfile's top functions (slower).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCH = 16


async def measure(calls: int, profile: bool) -> float:
    """Microseconds of CPU per direct call (see the module docstring)."""
    from falrt.server.api import runner_link
    from falrt.server.api.queue_service import QueueService
    from falrt.v1 import queue_pb2, runner_pb2
    from tests.inprocess import lab

    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

    with tempfile.TemporaryDirectory() as tmp:
        async with lab(Path(tmp), max_concurrency=1) as world:
            world.deploy("app", max_multiplexing=BATCH)
            service, context = QueueService(world.planes.scheduler), Context()
            link = runner_link.RunnerLinkService(world.planes.fleet, world.planes.dispatcher)
            request = queue_pb2.RunRequest(endpoint_id="local/app", path="/")
            request.input.data, request.input.content_type = b'{"value": 1}', "application/json"
            raw = request.SerializeToString()
            loop = asyncio.get_running_loop()
            first = loop.create_task(service.Run(request, context))
            runner = await world.runner("app", slots=BATCH)
            world.answer(runner, await world.assigned(runner))
            await first

            async def batch() -> None:
                tasks = [loop.create_task(service.Run(queue_pb2.RunRequest.FromString(raw),
                                                      context)) for _ in range(BATCH)]
                await asyncio.sleep(0)  # (each call is assigned)
                events = []
                while not runner.outbox.empty():
                    events.append(runner.outbox.get_nowait())
                for message in runner_link.coalesce(events):
                    assert message is not None
                    message.SerializeToString()
                answer = runner_pb2.RunnerMessage()
                for event in events:
                    result = answer.results.results.add(request_id=event.item.request_id)
                    result.output.data, result.output.content_type = b"{}", "application/json"
                    result.inference_time.FromNanoseconds(1000)
                link._handle(runner, runner_pb2.RunnerMessage.FromString(
                    answer.SerializeToString()))
                for task in tasks:
                    (await task).SerializeToString()

            for _ in range(100):
                await batch()
            batches = calls // BATCH
            return await _timed(batch, batches, profile) / (batches * BATCH) * 1e6


async def _timed(batch: Callable[[], Awaitable[None]], batches: int, profile: bool) -> float:
    """CPU seconds of `batches` runs of `batch` (cProfile's top functions printed when
    `profile`)."""
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    start = time.process_time()
    for _ in range(batches):
        await batch()
    spent = time.process_time() - start
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return spent


def one(tree: Path, calls: int) -> float:
    """`measure` in a fresh interpreter on the falrt and tests packages of `tree`."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, __file__, "--calls", str(calls), "--inner"],
                         env=env, check=True, capture_output=True, text=True, cwd=tree)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=16000)
    parser.add_argument("--base", type=Path, help="a tree to compare with, interleaved")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner or args.profile:
        import uvloop
        if not args.inner:
            sys.path.insert(0, str(REPO))  # (tests.inprocess)
        print(f"{uvloop.run(measure(args.calls, args.profile)):.2f}")
        return
    trees = {"B (this tree)": REPO} | ({"A (base)": args.base.resolve()} if args.base else {})
    figures: dict[str, list[float]] = {name: [] for name in trees}
    for number in range(args.rounds):
        order = list(trees.items()) if number % 2 == 0 else list(reversed(trees.items()))
        for name, tree in order:
            figures[name].append(one(tree, args.calls))
    for name, each in figures.items():
        print(f"{name}: {statistics.median(each):.2f} us per direct call (median; "
              f"{' / '.join(f'{x:.2f}' for x in each)})")


if __name__ == "__main__":
    main()
