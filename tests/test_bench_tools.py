"""The measuring tools of issue 18, on fixed inputs: h2load's report read into figures (and a
failed or short run refused), the regression check of `make bench-check`, and
bench/breakdown.py's reading of py-spy stacks and strace tables. The tools themselves run
against real servers in bench/ (bench/RESULTS.md, "Issue 18")."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.unit

sys.path.append(str(REPO / "bench"))  # (last: bench/ must not shadow anything)
import breakdown  # noqa: E402
import direct_python  # noqa: E402
import h2drive  # noqa: E402
import overhead  # noqa: E402

H2LOAD_OUT = """finished in 50.50ms, 198.04 req/s, 20.92KB/s
requests: 4 total, 4 started, 4 done, {ok} succeeded, {failed} failed, 0 errored, 0 timeout
status codes: 4 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.06KB (1082) total, 180B (180) headers (space savings 77.78%), {data}B ({data}) data
"""
H2LOAD_LOG = "1796298923764535\t200\t1000\n1796298923788300\t200\t2000\n" \
             "1796298923764571\t200\t3000\n1796298923764572\t200\t4000\n"


def _target(answer_bytes: int) -> h2drive.Target:
    async def verify() -> int:
        return answer_bytes

    return h2drive.Target("t", "http://127.0.0.1:1/a.B/C", h2drive.grpc_frame(b"x"), (),
                          lambda: {}, verify, answer_bytes)


def test_a_grpc_frame_is_the_flag_the_length_and_the_message() -> None:
    assert h2drive.grpc_frame(b'{"value": 1}') == b"\0\0\0\0\x0c" + b'{"value": 1}'


def test_an_h2load_run_is_read_into_latencies_and_rate(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text(H2LOAD_LOG)
    run = h2drive._parse(H2LOAD_OUT.format(ok=4, failed=0, data=68), log, _target(17), 4)
    run.cpu_s = {"server": 0.002}
    figures = run.as_json()
    assert (figures["calls"], figures["rps"], figures["p50_ms"]) == (4, 79.2, 2.5)
    assert figures["cpu_ms_per_call"] == {"server": 0.5, "total": 0.5}


def test_failed_calls_and_answers_without_their_bytes_fail_the_run(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text(H2LOAD_LOG)
    with pytest.raises(h2drive.LoadFailed, match="3 of 4 calls succeeded"):
        h2drive._parse(H2LOAD_OUT.format(ok=3, failed=1, data=51), log, _target(17), 4)
    # All HTTP 200, but one gRPC error (a trailers-only answer: no DATA) among them.
    with pytest.raises(h2drive.LoadFailed, match="some calls failed"):
        h2drive._parse(H2LOAD_OUT.format(ok=4, failed=0, data=51), log, _target(17), 4)


def test_bench_check_reports_each_ratio_worse_by_more_than_a_quarter(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = tmp_path / "ratios.json"
    recorded.write_text(json.dumps({"ratios": {
        "h2load.falrt_direct.c1.p50_ratio": 4.0, "h2load.falrt_direct.c16.rps_ratio": 0.3,
        "h2load.falrt_direct.c16.cpu_ratio": 4.0, "h2load.falrt_subscribe.c1.p50_ratio": 7.0}}))
    within = {"h2load.falrt_direct.c1.p50_ratio": 4.9, "h2load.falrt_direct.c16.rps_ratio": 0.25,
              "h2load.falrt_direct.c16.cpu_ratio": 2.0, "h2load.falrt_subscribe.c1.p50_ratio": 7}
    assert overhead.check_ratios(recorded, within)
    worse = within | {"h2load.falrt_direct.c1.p50_ratio": 5.2,  # 30% higher
                      "h2load.falrt_direct.c16.rps_ratio": 0.2}  # 50% fewer calls per second
    del worse["h2load.falrt_subscribe.c1.p50_ratio"]
    assert not overhead.check_ratios(recorded, worse)
    printed = capsys.readouterr().out
    assert "c1.p50_ratio: 4.0 -> 5.2 (30% worse)" in printed
    assert "c16.rps_ratio: 0.3 -> 0.2 (50% worse)" in printed
    assert "falrt_subscribe.c1.p50_ratio: recorded 7.0, not measured now" in printed
    assert "3 of 4 ratios worse" in printed
    assert "cpu_ratio" not in printed  # better is not worse


def test_py_spy_stacks_are_grouped_by_their_innermost_known_frame() -> None:
    thread = "thread_run (libpython3.11.so.1.0);Thread.run (threading.py:982)"
    loop = "run (falrt/server/main.py:89);run_forever (loop.c:33397);uv__io_poll (linux.c:1452)"
    raw = "\n".join([
        f"{loop};QueueService.Run (falrt/server/api/queue_service.py:80);"
        "0x7f (grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so);sendmsg (libc.so.6) 6",
        f"{loop};QueueService.Run (falrt/server/api/queue_service.py:81);uuid4 (uuid.py:723) 2",
        f"{loop};epoll_pwait (libc.so.6) 50",
        f"{thread};SQLiteStore._writer (falrt/store/sqlite.py:161);"
        "_queue_SimpleQueue_get (_queuemodule.c.h:177);0x7f1 (libc.so.6) 40",
        f"{thread};SQLiteStore._writer (falrt/store/sqlite.py:162);fdatasync (libc.so.6) 3",
        f"{thread};SQLiteStore._writer (falrt/store/sqlite.py:162);"
        "sqlite3VdbeExec (libsqlite3.so.0.8.6) 1",
        f"{loop};call_soon (_asynciomodule.c:10) 1",
    ])
    summary = breakdown.summarise(raw)
    assert (summary["busy_samples"], summary["idle_samples"], summary["fsync_samples"]) == (
        10, 90, 3)
    assert summary["groups"] == {"gRPC transport": 0.6, "falrt Python": 0.2, "store": 0.1,
                                 "event loop": 0.1}
    assert summary["top_falrt"] == {"QueueService.Run (queue_service.py)": 0.8,
                                    "SQLiteStore._writer (sqlite.py)": 0.1}


def test_strace_tables_give_calls_per_system_call() -> None:
    table = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 45.00    0.123456          12     10000       100 epoll_wait
 30.00    0.100000           5      2000           write
------ ----------- ----------- --------- --------- ----------------
100.00    0.223456          18     12000       100 total
"""
    assert breakdown.syscall_counts(table) == {"epoll_wait": 10000, "write": 2000}


def test_direct_python_times_direct_calls_that_each_get_their_answer() -> None:
    # (in-process: 160 calls through the handler, the scheduler and a played runner)
    import asyncio

    import uvloop

    micros = uvloop.run(asyncio.wait_for(direct_python.measure(160, profile=False), 30.0))
    assert 0 < micros < 10_000
