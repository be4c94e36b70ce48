"""
twisted.enterprise.adbapi with psycopg2 (blocking DB-API calls in adbapi's
thread pool, results delivered back to the reactor thread with
callFromThread), unmodified, on the reactor trial runs (C{--reactor=rust}
or C{--reactor=epoll}), against a throwaway PostgreSQL server.

It proves, on that reactor: runQuery, runOperation and runInteraction
(commit, rollback on an exception and on an SQL error); 100 concurrent
queries through a pool of 3 threads; and that the reactor keeps running
while a pool thread is blocked in the database: a LoopingCall keeps
ticking during a C{pg_sleep(0.5)} interaction (counted from inside the
interaction, before and after the query), and, with no timing involved, an
interaction blocked on an advisory lock is released only by a query the
reactor sends through another pool after a LoopingCall has ticked 20 times
while the first one is seen waiting on the lock in pg_stat_activity.
"""

from __future__ import annotations

from typing import Any

import psycopg2
from twisted.enterprise import adbapi
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from integration._env import check_reactor, pg_params

reactor: Any = _reactor


class AdbapiTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        check_reactor(reactor)
        self.pool = self.makePool(3)
        await self.pool.runOperation("DROP SCHEMA public CASCADE; CREATE SCHEMA public")

    def makePool(self, size: int) -> adbapi.ConnectionPool:
        pool = adbapi.ConnectionPool(
            "psycopg2",
            **pg_params(),
            application_name="twisted_shim adbapi tests",
            cp_min=1,
            cp_max=size,
            cp_reactor=reactor,
        )
        self.addCleanup(pool.close)
        return pool

    async def test_queries(self) -> None:
        self.assertEqual(await self.pool.runQuery("SELECT %s::int * 2", (21,)), [(42,)])
        await self.pool.runOperation("CREATE TABLE t (v text)")
        await self.pool.runOperation("INSERT INTO t VALUES (%s), (%s)", ("a", "b"))
        self.assertEqual(
            await self.pool.runQuery("SELECT v FROM t ORDER BY v"), [("a",), ("b",)]
        )
        await self.assertFailure(self.pool.runQuery("SELECT 1/0"), psycopg2.DataError)
        self.assertEqual(await self.pool.runQuery("SELECT 1"), [(1,)])

    async def test_interactions_commit_and_roll_back(self) -> None:
        await self.pool.runOperation("CREATE TABLE t (v int)")

        def insert(cursor: Any, values: list[int], fail: bool) -> int:
            for v in values:
                cursor.execute("INSERT INTO t VALUES (%s)", (v,))
            if fail:
                raise ValueError("roll back")
            cursor.execute("SELECT count(*) FROM t")
            return int(cursor.fetchone()[0])

        self.assertEqual(await self.pool.runInteraction(insert, [1, 2, 3], False), 3)
        await self.assertFailure(
            self.pool.runInteraction(insert, [4, 5], True), ValueError
        )

        def duplicate(cursor: Any) -> None:
            cursor.execute("INSERT INTO t VALUES (6)")
            cursor.execute("INSERT INTO nowhere VALUES (1)")

        await self.assertFailure(
            self.pool.runInteraction(duplicate), psycopg2.ProgrammingError
        )
        self.assertEqual(await self.pool.runQuery("SELECT sum(v) FROM t"), [(6,)])

    async def test_concurrent_queries(self) -> None:
        ds = [
            self.pool.runQuery("SELECT %s, pg_backend_pid()", (i,)) for i in range(100)
        ]
        results = await gatherResults(ds)
        self.assertEqual([rows[0][0] for rows in results], list(range(100)))
        self.assertLessEqual(len({rows[0][1] for rows in results}), 3)

    async def test_loop_ticks_during_pg_sleep(self) -> None:
        """
        A LoopingCall every 20 ms keeps ticking while a pool thread sleeps
        0.5 s in the database (about 25 ticks expected; 5 required, counted
        by the interaction itself just before and after its query).
        """
        ticks = [0]

        def tick() -> None:
            ticks[0] += 1

        loop = LoopingCall(tick)
        loop.clock = reactor
        loop.start(0.02)
        self.addCleanup(loop.stop)

        def sleep(cursor: Any) -> int:
            before = ticks[0]
            cursor.execute("SELECT pg_sleep(0.5)")
            return ticks[0] - before

        during = await self.pool.runInteraction(sleep)
        self.assertGreaterEqual(during, 5)

    async def test_reactor_releases_blocked_interaction(self) -> None:
        """
        A pool thread blocks on an advisory lock that a one-thread pool
        holds; the reactor, meanwhile, sees it waiting, ticks a LoopingCall
        20 times, and only then releases the lock through the other pool.
        The interaction can only finish if the reactor kept running while
        a thread was blocked in the database.
        """
        holder = self.makePool(1)
        await holder.runQuery("SELECT pg_advisory_lock(4242)")

        def wait_for_lock(cursor: Any) -> str:
            cursor.execute("SELECT pg_advisory_lock(4242)")
            cursor.execute("SELECT pg_advisory_unlock(4242)")
            return "got it"

        blocked = self.pool.runInteraction(wait_for_lock)
        finished: list[object] = []

        def finish(result: str) -> str:
            finished.append(result)
            return result

        blocked.addBoth(finish)

        for _ in range(500):
            rows = await holder.runQuery(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE %s",
                ("%pg_advisory_lock(4242)%",),
            )
            if rows == [(1,)]:
                break
            await deferLater(reactor, 0.02)
        self.assertEqual(rows, [(1,)])

        ticked: Deferred[None] = Deferred()
        ticks = [0]

        def tick() -> None:
            ticks[0] += 1
            if ticks[0] == 20:
                loop.stop()
                ticked.callback(None)

        loop = LoopingCall(tick)
        loop.clock = reactor
        loop.start(0.001)
        await ticked
        self.assertEqual(finished, [])
        await holder.runQuery("SELECT pg_advisory_unlock(4242)")
        self.assertEqual(await blocked, "got it")


class ReactorTests(TestCase):
    def test_reactor_under_test(self) -> None:
        """The module runs on the reactor tests/test_integration.py asked for."""
        check_reactor(reactor)
