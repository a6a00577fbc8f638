"""The test PostgreSQL server starts and takes connections."""

from __future__ import annotations

import asyncpg

from bench.pg import PgServer


async def test_the_test_server_answers(pg_server: PgServer) -> None:
    conn = await asyncpg.connect(pg_server.url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
