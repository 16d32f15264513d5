"""What the edge's input check costs (falrt/server/queue/input_check.py), in one run.

    python bench/validation.py [--quick] [--out bench/validation.json]

Two parts:

- in-process: the check of bench/apps/job_app.py's input (an image-generation request:
  prompt, sizes, LoRAs, seed) for inputs of about 0.3 KiB, 16 KiB, 256 KiB and 1 MiB
  (longer prompts and more LoRAs), in microseconds per input, beside the runner's own typed
  msgspec decode of the same bytes (the 1 MiB one is over MAX_CHECKED_BYTES: the server
  leaves it to the runner; it is measured to show why);
- end to end: a bare grpc.aio echo, and the app called directly (`Queue.Run`) on two falrt
  servers, one checking inputs and one started with `--no-input-check`, measured interleaved
  at concurrency 1 and 16 with the 0.3 KiB input. The ratios divide by the bare echo's p50
  of the same run; `check_added_ms` is what the check adds to a call's p50.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import msgspec
import uvloop
from baselines import ECHO_METHOD
from loadgen import (
    CHANNEL_OPTIONS,
    Figures,
    falrt_direct_call,
    grpc_bytes_call,
    measure_interleaved,
)
from servers import (
    LISTENING,
    baseline,
    deploy,
    falrt_server,
    first_success,
    guarded,
    machine,
    process,
)

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from job_app import Job

from falrt.client.credentials import metadata_for
from falrt.sdk.codec import json_schema
from falrt.sdk.input_check import input_check_for
from falrt.server.queue.input_check import MAX_CHECKED_BYTES, compile_check

TARGET = "bench/apps/job_app.py::JobApp"


def job_body(loras: int, prompt_chars: int) -> bytes:
    """A valid input of the job app with `loras` LoRAs and a prompt of `prompt_chars`."""
    return msgspec.json.encode({
        "prompt": ("a watercolor of a lighthouse at dusk " * (prompt_chars // 36 + 1))[
            :prompt_chars],
        "image_size": {"width": 1024, "height": 768}, "num_inference_steps": 28,
        "seed": 42, "output_format": "png",
        "loras": [{"path": f"https://weights.example/lora-{i}.safetensors", "scale": 0.8}
                  for i in range(loras)],
    })


SIZES = {  # name: (loras, prompt characters)
    "0.3KiB": (1, 120),
    "16KiB": (150, 4000),
    "256KiB": (3300, 4000),
    "1MiB": (13500, 4000),
}


def per_input_us(work: Any, data: bytes, budget_s: float) -> float:
    """Mean microseconds of `work(data)` over as many runs as fit in `budget_s`."""
    work(data)
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < budget_s:
        for _ in range(10):
            work(data)
        runs += 10
    return elapsed / runs * 1e6


def in_process(budget_s: float) -> dict[str, Any]:
    schema = msgspec.json.encode(json_schema(Job)).decode()
    check = compile_check(schema, input_check_for(Job), "job", max_bytes=1 << 30)
    assert check is not None
    decode = msgspec.json.Decoder(Job).decode
    out: dict[str, Any] = {}
    for name, (loras, prompt) in SIZES.items():
        data = job_body(loras, prompt)
        check_us = per_input_us(check, data, budget_s)
        decode_us = per_input_us(decode, data, budget_s)
        out[name] = {"bytes": len(data), "checked_by_server": len(data) <= MAX_CHECKED_BYTES,
                     "check_us": round(check_us, 2),
                     "runner_decode_us": round(decode_us, 2),
                     "check_us_per_mib": round(check_us / len(data) * (1 << 20))}
    return out


async def end_to_end(calls_per_level: int, levels: list[int], tmp: Path) -> dict[str, Any]:
    body = job_body(*SIZES["0.3KiB"])
    async with contextlib.AsyncExitStack() as stack:
        on = await stack.enter_async_context(falrt_server(tmp / "on", tmp / "on.log"))
        off = await stack.enter_async_context(
            falrt_server(tmp / "off", tmp / "off.log", "--no-input-check"))
        ready = await stack.enter_async_context(
            process(baseline("grpc-echo"), LISTENING, tmp / "grpc-echo.log"))
        bare = await stack.enter_async_context(grpc.aio.insecure_channel(
            f"127.0.0.1:{ready.group(1)}", options=CHANNEL_OPTIONS))
        calls = {"grpc_echo": grpc_bytes_call(bare, ECHO_METHOD, body)}
        for name, address in (("falrt_checked", on), ("falrt_unchecked", off)):
            endpoint_id = await deploy(address, TARGET)
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
            calls[name] = falrt_direct_call(channel, endpoint_id, body, metadata_for(address))
            await first_success(calls[name], f"{name} {endpoint_id}")
        results: dict[str, Any] = {}
        for level in levels:
            figures: dict[str, Figures] = await measure_interleaved(
                calls, level, calls_per_level, warmup=20, cap_s=60)
            base = figures["grpc_echo"].p50_ms
            results[f"c{level}"] = {
                **{name: f.as_json() for name, f in figures.items()},
                "checked_p50_ratio": round(figures["falrt_checked"].p50_ms / base, 2),
                "unchecked_p50_ratio": round(figures["falrt_unchecked"].p50_ms / base, 2),
                "check_added_ms": round(figures["falrt_checked"].p50_ms
                                        - figures["falrt_unchecked"].p50_ms, 3),
            }
        return {"body_bytes": len(body), **results}


def main() -> None:
    parser = argparse.ArgumentParser(description="the cost of the edge's input check")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    report: dict[str, Any] = {"in_process": in_process(0.05 if args.quick else 0.5)}
    print(json.dumps(report["in_process"], indent=2))
    with tempfile.TemporaryDirectory(prefix="falrt-bench-") as tmp:
        report["end_to_end"] = uvloop.run(guarded(end_to_end(
            200 if args.quick else 2000, [1, 16], Path(tmp))))
    report["machine"] = machine()
    print(json.dumps(report["end_to_end"], indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
