"""A fresh PostgreSQL database per test, on the server `FALRT_TEST_POSTGRES_DSN` names.

`make test` (and so CI) starts that server with scripts/postgres.sh. Without the variable a
PostgreSQL test fails rather than skips, so a run without PostgreSQL cannot pass.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import asyncpg
import pytest

DSN_VARIABLE = "FALRT_TEST_POSTGRES_DSN"


def server_dsn() -> str:
    """The test server's DSN; fails the calling test when it is not configured."""
    dsn = os.environ.get(DSN_VARIABLE, "")
    if not dsn:
        pytest.fail(
            f"{DSN_VARIABLE} is not set: run the tests with `make test`, which starts a "
            f"PostgreSQL server (scripts/postgres.sh), or export {DSN_VARIABLE}=postgresql://..."
        )
    return dsn


@contextmanager
def fresh_database() -> Iterator[str]:
    """Creates an empty database, yields its DSN, and drops it (with its connections)."""
    admin = server_dsn()
    name = f"falrt_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield urlsplit(admin)._replace(path=f"/{name}").geturl()
    finally:
        asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
