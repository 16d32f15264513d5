"""A headless Chromium driven over the Chrome DevTools Protocol, for the dashboard's test.

`Browser.start` runs Debian's `chromium` (`scripts/chromium.sh` installs it) with
`--remote-debugging-port=0` and a profile in a temporary directory, reads the DevTools
address it prints, and speaks CDP over one WebSocket (`websockets`' sync client) in
"flat" mode: each page is a target attached by session id. Only what the test needs:
open a page, evaluate JavaScript, wait for a condition of the page with a deadline
(`Page.wait_until`, polling the DOM: the page has no event to wait on), take a screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import queue
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.harness import REPO

DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


class CdpError(AssertionError):
    """A CDP call failed, or the page threw."""


def chromium_binary() -> str:
    """The browser binary (installed first when missing: scripts/chromium.sh)."""
    return subprocess.run([str(REPO / "scripts/chromium.sh")], capture_output=True, text=True,
                          check=True, timeout=600).stdout.strip()


class Browser:
    """One headless Chromium process and its DevTools connection. `close` ends both."""

    def __init__(self, proc: subprocess.Popen[str], ws: ClientConnection) -> None:
        self._proc = proc
        self._ws = ws
        self._ids = itertools.count(1)

    @classmethod
    def start(cls, profile: Path, timeout: float = 60.0) -> Browser:
        proc = subprocess.Popen(
            [chromium_binary(), "--headless=new", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr or ()],
                         daemon=True).start()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                match = DEVTOOLS.search(lines.get(timeout=left))
            except queue.Empty:
                break
            if match:
                return cls(proc, connect(match.group(1), max_size=64 * 2**20, open_timeout=30,
                                          legacy=True))
        proc.kill()
        proc.wait()
        raise CdpError(f"chromium printed no DevTools address within {timeout} s")

    def call(self, method: str, params: dict[str, Any] | None = None, session: str = "",
             timeout: float = 30.0) -> dict[str, Any]:
        """Sends one command and returns its result (events read meanwhile are dropped)."""
        call_id = next(self._ids)
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def page(self, url: str, width: int = 1280, height: int = 900) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        page.call("Page.navigate", {"url": url})
        return page

    def close(self) -> None:
        with contextlib.suppress(Exception):  # (it closes the socket as it ends)
            self.call("Browser.close", timeout=10)
        self._ws.close()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class Page:
    """One tab."""

    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._browser.call(method, params, self._session)

    def evaluate(self, expression: str) -> Any:
        """The value of `expression` in the page (promises awaited). Raises CdpError when it
        throws."""
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 30.0, what: str = "") -> Any:
        """The first truthy value of `expression`, evaluated until `timeout` seconds passed
        (then fails, with the page's text for the reader)."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            try:
                value = self.evaluate(expression)
            except CdpError:
                value = None  # (the page is still loading)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''")
                raise AssertionError(f"timed out after {timeout} s waiting for "
                                     f"{what or expression}; the page shows:\n{text}")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (beyond the viewport), written to `path`."""
        data = self.call("Page.captureScreenshot",
                         {"format": "png", "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))
        return path
