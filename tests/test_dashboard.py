"""The dashboard (`/ui`) in a real headless Chromium against a real server.

The server is `falrt server --http-listen 127.0.0.1:0` (plain HTTP on loopback) with
`examples/hello.py` deployed; the browser is Debian's `chromium` driven over the DevTools
protocol (tests/cdp.py). The page is opened, given the admin key, and used as a person
would: the apps page lists hello, the playground's form for hello submits and shows the
greeting, the request's page shows its logs. Screenshots of the three pages are written
to the test's directory, or to `FALRT_DASHBOARD_SCREENSHOTS` when set (`docs/` holds the
copies the documentation shows: `FALRT_DASHBOARD_SCREENSHOTS=docs pytest
tests/test_dashboard.py`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from falrt.client import credentials
from falrt.client.control import ControlClient
from tests.cdp import Browser, Page
from tests.harness import ServerProcess, stop_cleanly
from tests.https import HTTP_LISTENING

pytestmark = pytest.mark.e2e

XSS = '<img id="pwned" src="x" onerror="window.pwned = 1">'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("dashboard-server")
    proc = ServerProcess(root / "data", root / "server.log",
                         extra=["--http-listen", "127.0.0.1:0"]).start()
    for target in ("examples/hello.py::Hello", "examples/stream.py::Tokens",
                   "tests/apps/pictures.py::Pictures"):
        proc.deploy(target)
    yield proc
    stop_cleanly(proc)


@pytest.fixture(scope="module")
def base_url(server: ServerProcess) -> str:
    return "http://" + server.wait_for_output(HTTP_LISTENING).group(1)


@pytest.fixture(scope="module")
def admin_key(server: ServerProcess) -> str:
    key = credentials.key_for(server.address)
    assert key is not None
    return key


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium = Browser.start(tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def page(browser: Browser, base_url: str, admin_key: str) -> Page:
    """The dashboard, signed in with the admin key as a person does: typed into its form."""
    tab = browser.page(base_url + "/ui")
    tab.wait_until("!!document.querySelector('#login #key')", what="the key form")
    tab.evaluate(f"document.getElementById('key').value = {json.dumps(admin_key)}; "
                 "document.getElementById('login').requestSubmit(); true")
    return tab


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("FALRT_DASHBOARD_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_hash(page: Page, fragment: str) -> None:
    """Shows the page at `fragment`, emptied first: what a test waits for next cannot be
    left over from the page before (also when it is the same)."""
    page.evaluate(f"{{ document.getElementById('main').replaceChildren();"
                  f"const target = {json.dumps(fragment)};"
                  "if (location.hash === target) window.dispatchEvent(new HashChangeEvent("
                  "'hashchange')); else location.hash = target; } true")


def text_of(selector: str) -> str:
    """JavaScript: the text of the first element `selector` finds ("" when none)."""
    return f"((document.querySelector({json.dumps(selector)}) || {{}}).textContent || '')"


def run_playground(page: Page, app: str, values: dict[str, str]) -> None:
    """Opens the app's page, types `values` into its (first) playground form, submits."""
    open_hash(page, f"#/apps/{app}")
    form = "document.querySelector('form.playground')"
    page.wait_until(f"!!{form}", what=f"{app}'s playground form")
    page.evaluate(f"{{ const form = {form};"
                  f"for (const [name, value] of Object.entries({json.dumps(values)})) {{"
                  "  const input = form.elements.namedItem(name); input.value = value;"
                  "  input.dispatchEvent(new Event('input', {bubbles: true})); }"
                  "form.requestSubmit(); } true")


def run_hello(page: Page, name: str) -> str:
    """Runs hello in its playground; waits for the greeting it shows; returns the request
    id the playground links to."""
    run_playground(page, "hello", {"name": name})
    page.wait_until(f"{text_of('.output .result dl dd')} === {json.dumps(f'Hello, {name}!')}",
                    what="the greeting in the playground's output")
    request_id: str = page.evaluate(
        "document.querySelector('.output .statuses a').textContent")
    return request_id


def test_the_apps_page_lists_the_deployed_example(page: Page, shots: Path) -> None:
    page.wait_until(f"{text_of('#apps-table')}.includes('local/hello')",
                    what="local/hello in the apps table")
    row = page.evaluate(text_of("#apps-table tr[data-app=hello]"))
    assert "private" in row and "/ unary" in row
    assert page.evaluate("document.querySelectorAll('#charts polyline').length") == 3
    page.screenshot(shots / "dashboard-apps.png")


def test_the_playground_shows_the_greeting_and_the_request_page_its_logs(
    page: Page, shots: Path,
) -> None:
    request_id = run_hello(page, "world")
    statuses = page.evaluate(text_of(".output .statuses"))
    assert "COMPLETED" in statuses
    assert f"greeting world (request {request_id})" in page.evaluate(text_of(".output .logs"))
    page.screenshot(shots / "dashboard-playground.png")

    open_hash(page, f"#/requests/{request_id}")
    page.wait_until(f"{text_of('#logs')}.includes('greeting world')", what="the request's logs")
    facts = page.evaluate(text_of("section.card .facts"))
    assert "COMPLETED" in facts and "local/hello" in facts
    assert page.evaluate(text_of(".output dl dd")) == "Hello, world!"
    page.screenshot(shots / "dashboard-request.png")

    open_hash(page, "#/runners")
    page.wait_until(f"{text_of('#runners-table')}.includes('hello')", what="hello's runner")
    assert page.evaluate("document.querySelectorAll('#runners-table .timeline rect').length") > 0
    page.screenshot(shots / "dashboard-runners.png")


def test_the_playground_shows_a_streams_outputs_as_they_arrive(page: Page) -> None:
    words = "the quick brown fox"
    run_playground(page, "tokens", {"sentence": words, "delay_s": "0.5"})
    partials = "document.querySelectorAll('.output .partials pre').length"
    first = page.wait_until(partials, what="the first partial output")
    assert first < 4, "the outputs were shown only once the stream had ended"
    page.wait_until(f"{partials} === 4", what="every partial output")
    assert words in page.evaluate(text_of(".output .result dl"))


def test_the_playground_shows_image_outputs_as_images(page: Page, shots: Path) -> None:
    """A data URI in a string field, and fal's image object ({url, content_type})."""
    run_playground(page, "pictures", {"width": "120"})
    page.wait_until("[...document.querySelectorAll('.output .result img')].filter("
                    "(img) => img.complete && img.naturalWidth === 120).length === 2",
                    what="two decoded images of 120 pixels")
    page.screenshot(shots / "dashboard-images.png")


def test_a_request_page_follows_the_request_until_it_completes(
    page: Page, base_url: str, admin_key: str,
) -> None:
    body = {"sentence": "one two three four", "delay_s": 0.5}
    submitted = httpx.post(f"{base_url}/queue/local/tokens", json=body, timeout=30,
                           headers={"Authorization": f"Key {admin_key}"}).json()
    open_hash(page, f"#/requests/{submitted['request_id']}")
    status = text_of("#request-status")
    first = page.wait_until(status, what="the request's status")
    assert not first.startswith("COMPLETED"), "the page opened too late to follow it"
    page.wait_until(f"{status}.startsWith('COMPLETED')", what="the page to show it completed")
    assert "one two three four" in page.evaluate(text_of(".output")), page.evaluate(text_of("main"))


def test_untrusted_text_is_shown_as_text_not_run_as_html(page: Page) -> None:
    """The name goes into the output, the logs and the request's input: three places a
    page that wrote HTML would run it."""
    request_id = run_hello(page, XSS)
    open_hash(page, f"#/requests/{request_id}")
    page.wait_until(f"{text_of('#logs')}.includes({json.dumps(XSS)})", what="the HTML as text")
    assert page.evaluate("document.getElementById('pwned') === null && !window.pwned")


def test_the_apps_page_shows_the_runners_that_served_the_playground(
    page: Page, shots: Path,
) -> None:
    open_hash(page, "#/")
    runners = "document.querySelectorAll('#runners-table tbody tr').length"
    assert page.wait_until(f"{runners} >= 3 && {runners}", what="the three apps' runners")
    row = page.evaluate(text_of("#apps-table tr[data-app=hello]"))
    assert "IDLE" in row or "RUNNING" in row
    page.screenshot(shots / "dashboard-overview.png")


def test_the_key_stays_in_the_tab(page: Page, server: ServerProcess, admin_key: str) -> None:
    """Not in a cookie, not in the URL, not in the server's log; only in sessionStorage."""
    secret = admin_key.partition(":")[2]
    assert page.evaluate("document.cookie") == ""
    assert secret not in page.evaluate("location.href")
    assert page.evaluate("sessionStorage.getItem('falrt.dashboard.key')") == admin_key
    assert page.evaluate("localStorage.length") == 0
    assert secret not in server.log()


def test_the_dashboard_api_needs_an_admin_key_and_the_page_none(
    server: ServerProcess, base_url: str, admin_key: str,
) -> None:
    with ControlClient(server.address, key=admin_key) as control:
        api_key = control.create_key("API", "a caller, not an operator").key
    with httpx.Client(base_url=base_url, timeout=30) as client:
        page = client.get("/ui/")
        assert page.status_code == 200 and "falrt dashboard" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/ui/static/app.js").headers["content-type"].startswith(
            "text/javascript")
        assert client.get("/ui/static/nope.js").status_code == 404
        assert client.get("/ui/api/overview").status_code == 401
        denied = client.get("/ui/api/overview", headers={"Authorization": f"Key {api_key}"})
        assert denied.status_code == 403
        assert denied.json()["error_type"] == "permission_denied"
        auth = {"Authorization": f"Key {admin_key}"}
        overview = client.get("/ui/api/overview", headers=auth).json()
        assert sorted(app["name"] for app in overview["apps"]) == ["hello", "pictures",
                                                                   "tokens"]
        assert set(overview["history"]["series"]) == {"queue_depth", "requests_per_s",
                                                      "runners"}
        detail = client.get("/ui/api/apps/hello", headers=auth).json()
        (endpoint,) = detail["endpoints"]
        assert endpoint["fields"][0]["name"] == "name"
        assert endpoint["fields"][0]["kind"] == "string"
        assert client.get("/ui/api/apps/nope", headers=auth).status_code == 404
        assert client.get("/ui/api/requests/nope", headers=auth).status_code == 404
