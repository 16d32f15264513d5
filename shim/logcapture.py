"""Routes what a handler prints or logs to its request's log (RunnerLog messages).

`install()` replaces `sys.stdout`/`sys.stderr` with `RoutedStream`s and adds a
`RequestLogHandler` to the root logger. Both look up the `LogTarget` bound in the current
context (`bind`): the runner binds one per request in the request's task, and the context is
copied into the worker thread of a sync handler, so output is attributed correctly under
multiplexing. Output outside any request (setup, teardown, the shim itself, threads the
handler started on its own) goes to the real stderr, which the server keeps as the runner's
log. One RunnerLog per line; a line without its newline yet is held until the newline comes
or the request ends (`LogTarget.flush`).

Each request log line is also copied into the runner's log, timestamped and tagged with its
request id (`RunnerLogCopy`), so `falrt runners logs` shows what the handlers printed. The
copy costs the line's writer a clock read and a queue put; one thread writes the lines out.
"""

from __future__ import annotations

import io
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TextIO

from falrt.limits import LOG_LINE_BYTES, cut_line
from falrt.v1 import runner_pb2

from . import wire

__all__ = ["LogTarget", "RequestLogHandler", "RoutedStream", "bind", "install"]

Emit = Callable[[runner_pb2.RunnerMessage], None]

_target: ContextVar[LogTarget | None] = ContextVar("falrt_log_target", default=None)


class RunnerLogCopy:
    """Copies request log lines into the runner's log (its real stderr) as
    `<time> <source> [<request id>]: <line>`. `put` is callable from any thread and never
    blocks; a daemon thread, started by the first `put`, writes and flushes. Lines still
    queued when the process exits abruptly (os._exit) are lost: the request's own log has them.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lines: queue.SimpleQueue[tuple[float, str, str, str]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, request_id: str, source: str, line: str) -> None:
        self._lines.put((time.time(), request_id, source, line))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._write, name="falrt-runner-log", daemon=True)
                    self._thread.start()

    def _write(self) -> None:
        while True:
            item = self._lines.get()
            while True:
                self._out.write(_copied_line(*item))
                try:
                    item = self._lines.get_nowait()
                except queue.Empty:
                    break
            try:
                self._out.flush()
            except (OSError, ValueError):  # stderr closed at exit: nothing left to keep
                return


def _copied_line(at: float, request_id: str, source: str, line: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"{stamp},{int(at % 1 * 1000):03d} {source} [{request_id}]: {line}\n"


_copy: RunnerLogCopy | None = None


class LogTarget:
    """The log of one request. Callable from the loop or the request's worker thread
    (one writer at a time, as a handler runs in one thread at a time)."""

    __slots__ = ("_dropping", "_emit", "_pending", "request_id")

    def __init__(self, request_id: str, emit: Emit) -> None:
        self.request_id = request_id
        self._emit = emit
        self._pending: dict[str, str] = {}
        # Per source, the bytes of an over-long line dropped so far (its start was sent,
        # cut at LOG_LINE_BYTES); the rest of that line up to its newline is dropped too.
        self._dropping: dict[str, int] = {}

    def write(self, source: str, text: str) -> None:
        """Adds stream text; emits every completed line (cut at LOG_LINE_BYTES)."""
        if source in self._dropping:
            end = text.find("\n")
            if end < 0:
                self._dropping[source] += len(text.encode(errors="replace"))
                return
            self._dropping[source] += len(text[:end].encode(errors="replace"))
            self._emit_line(source, self._pending.pop(source, ""), self._dropping.pop(source))
            text = text[end + 1:]
        if "\n" not in text:
            if text:
                self._hold(source, self._pending.get(source, "") + text)
            return
        lines = (self._pending.pop(source, "") + text).split("\n")
        for line in lines[:-1]:
            self._emit_line(source, line.rstrip("\r"))
        if lines[-1]:
            self._hold(source, lines[-1])

    def _hold(self, source: str, text: str) -> None:
        """Keeps a line without its newline yet. Past LOG_LINE_BYTES characters (at least
        as many bytes) only its start is kept; the rest of it is counted and dropped."""
        if len(text) <= LOG_LINE_BYTES:
            self._pending[source] = text
            return
        self._pending[source] = text[:LOG_LINE_BYTES]
        self._dropping[source] = len(text[LOG_LINE_BYTES:].encode(errors="replace"))

    def _emit_line(self, source: str, line: str, dropped_bytes: int = 0) -> None:
        line = cut_line(line, dropped_bytes)
        self._emit(wire.log_message(self.request_id, line, source))
        if _copy is not None:
            _copy.put(self.request_id, source, line)

    def record(self, source: str, message: str) -> None:
        """Emits a whole message (e.g. a logging record), one RunnerLog per line."""
        for line in message.splitlines() or [""]:
            self._emit_line(source, line)

    def flush(self) -> None:
        """Emits held partial lines. Called when the request ends, before its Result."""
        pending, self._pending = self._pending, {}
        dropping, self._dropping = self._dropping, {}
        for source, text in pending.items():
            self._emit_line(source, text, dropping.get(source, 0))


def bind(target: LogTarget) -> None:
    """Makes `target` receive the output of the current context (task or thread)."""
    _target.set(target)


class RoutedStream(io.TextIOBase):
    """A text stream that writes to the bound request's log, else to `fallback`."""

    def __init__(self, source: str, fallback: TextIO) -> None:
        super().__init__()
        self._source = source
        self._fallback = fallback

    def write(self, s: str) -> int:
        target = _target.get()
        if target is None:
            return self._fallback.write(s)
        target.write(self._source, s)
        return len(s)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._fallback.flush()

    def fileno(self) -> int:
        return self._fallback.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only, as on real streams
        return self._fallback.encoding


class RequestLogHandler(logging.Handler):
    """Sends log records made while serving a request to its log (source = level name);
    other records go to `fallback` as timestamped lines."""

    def __init__(self, fallback: TextIO) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self._fallback = logging.StreamHandler(fallback)
        self._fallback.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )

    def emit(self, record: logging.LogRecord) -> None:
        target = _target.get()
        if target is None:
            self._fallback.handle(record)
            return
        try:
            target.record(record.levelname, self.format(record))
        except Exception:
            self.handleError(record)


def install() -> TextIO:
    """Routes sys.stdout, sys.stderr and root logging, and copies request log lines into
    the runner's log; returns the real stderr. Once per process."""
    global _copy
    real_stderr = sys.__stderr__ or sys.stderr
    _copy = RunnerLogCopy(real_stderr)
    sys.stdout = RoutedStream("stdout", real_stderr)
    sys.stderr = RoutedStream("stderr", real_stderr)
    root = logging.getLogger()
    root.addHandler(RequestLogHandler(real_stderr))
    if root.level == logging.WARNING:
        root.setLevel(logging.INFO)
    return real_stderr
