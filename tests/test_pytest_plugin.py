"""falrt.pytest_plugin as an app author uses it: a test file of theirs, run by pytest
(pytester, in a subprocess), deploys an example to the session's real server and calls it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.e2e

HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello.py"

USER_TESTS = f'''
def test_hello_answers(falrt_server, falrt_client):
    endpoint = falrt_server.deploy("{HELLO}::Hello")
    assert falrt_client.run(endpoint, {{"name": "plugin"}}) == {{"greeting": "Hello, plugin!"}}


def test_the_server_is_shared_by_the_session(falrt_server, falrt_client):
    apps = falrt_server.cli("apps", "list", "--output", "json").stdout
    assert "hello" in apps  # deployed by the test before


def test_the_server_got_the_extra_flag(falrt_server):
    assert "http" in falrt_server.listeners
'''


def test_a_user_test_file_deploys_and_calls_through_the_fixtures(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest('pytest_plugins = ["falrt.pytest_plugin"]')
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--falrt-server-arg=--http-listen=127.0.0.1:0",
        timeout=240)
    result.assert_outcomes(passed=3)
