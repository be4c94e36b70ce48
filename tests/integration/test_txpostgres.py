"""
txpostgres, unmodified, on the reactor trial runs (C{--reactor=rust} or
C{--reactor=epoll}): psycopg2's asynchronous connections, driven by the
reactor's addReader/addWriter, against a throwaway PostgreSQL server.

It proves, on that reactor: queries and errors on one connection, and many
queued on it at once; a ConnectionPool of 5 serving 200 concurrent queries
through its queue, on exactly 5 backends; transactions (runInteraction)
that commit, roll back on an exception or an SQL error, and stay isolated
while open (another connection does not see their writes, and the server
shows them idle in transaction while the interaction waits on a Deferred);
LISTEN/NOTIFY, in order, with a notification from a rolled-back
transaction never delivered; cancelling a running query (C{pg_sleep}) on a
connection and through a pool, and a queued pool query, after which the
connections work; the server terminating a backend in the middle of a query
(C{pg_terminate_backend} from another connection): the query's Deferred
fails with OperationalError, a plain connection then fails cleanly, and a
pool whose connections have txpostgres's DeadConnectionDetector reconnects
and serves every query again on 5 backends, none of them the dead one; the
server terminating idle connections (seen through the reactor's readiness
alone), after which a plain one fails cleanly and a detector reconnects.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import psycopg2
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from txpostgres import reconnection, txpostgres

# Not public, but what Connection.cancel() swallows: Deferred.cancel() on a
# running query raises it (the query ends later, with CancelledError). A
# pool has no cancel() of its own, so its users catch it themselves.
from txpostgres.txpostgres import _CancelInProgress

from integration._env import check_reactor, pg_dsn

reactor: Any = _reactor
T = TypeVar("T")


def interaction(
    f: Callable[..., Coroutine[Any, Any, T]],
) -> Callable[..., Deferred[T]]:
    """An async function as a runInteraction callable."""

    def run(cursor: Any, *args: Any) -> Deferred[T]:
        return Deferred.fromCoroutine(f(cursor, *args))

    return run


def release(gate: Deferred[None]) -> None:
    """Fire C{gate} unless it fired already."""
    if not gate.called:
        gate.callback(None)


def cancel(d: Deferred[Any]) -> None:
    """Cancel a txpostgres Deferred, running or not."""
    try:
        d.cancel()
    except _CancelInProgress:
        pass


class _Base(TestCase):
    timeout = 60

    admin: txpostgres.Connection

    async def setUp(self) -> None:  # type: ignore[override]
        """Each test starts with an empty schema, and a connection to watch."""
        check_reactor(reactor)
        self.dsn = pg_dsn()
        self.admin = await self.connect()
        await self.admin.runOperation(
            "DROP SCHEMA public CASCADE; CREATE SCHEMA public"
        )

    async def connect(self) -> txpostgres.Connection:
        conn = txpostgres.Connection(reactor=reactor)
        await conn.connect(self.dsn)
        self.addCleanup(conn.close)
        return conn

    async def pool(
        self, size: int, cls: type[txpostgres.ConnectionPool] | None = None
    ) -> Any:
        pool = (cls or txpostgres.ConnectionPool)(None, self.dsn, min=size)
        await pool.start()
        self.addCleanup(pool.close)
        return pool

    async def backends(
        self, admin: txpostgres.Connection, marker: str, state: str
    ) -> list[int]:
        """Pids of the other backends running a query that contains C{marker}."""
        rows = await admin.runQuery(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND datname = current_database() AND state = %s AND query LIKE %s",
            (state, f"%{marker}%"),
        )
        return [pid for (pid,) in rows]

    async def until_backends(
        self,
        admin: txpostgres.Connection,
        marker: str,
        state: str = "active",
        n: int = 1,
    ) -> list[int]:
        """Wait (at most 10 s) until C{n} backends run the marked query."""
        for _ in range(500):
            pids = await self.backends(admin, marker, state)
            if len(pids) == n:
                return pids
            await deferLater(reactor, 0.02)
        self.fail(f"never saw {n} backend(s) {state} with {marker!r}")


class ConnectionTests(_Base):
    async def test_queries(self) -> None:
        conn = await self.connect()
        self.assertEqual(await conn.runQuery("SELECT %s::int + 1", (41,)), [(42,)])
        await conn.runOperation("CREATE TABLE t (id serial PRIMARY KEY, v text)")
        await conn.runOperation("INSERT INTO t (v) VALUES (%s), (%s)", ("a", "b"))
        self.assertEqual(
            await conn.runQuery("SELECT v FROM t ORDER BY id"), [("a",), ("b",)]
        )
        rows = await conn.runQuery("SELECT generate_series(1, 10000)")
        self.assertEqual(len(rows), 10000)

    async def test_errors(self) -> None:
        conn = await self.connect()
        await self.assertFailure(conn.runQuery("SELECT 1/0"), psycopg2.DataError)
        await self.assertFailure(conn.runQuery("SELEC 1"), psycopg2.ProgrammingError)
        self.assertEqual(await conn.runQuery("SELECT 1"), [(1,)])

    async def test_queued_on_one_connection(self) -> None:
        """Queries issued at once on one connection run one after another."""
        conn = await self.connect()
        results = await gatherResults(
            [conn.runQuery("SELECT %s", (i,)) for i in range(100)]
        )
        self.assertEqual(results, [[(i,)] for i in range(100)])


class PoolTests(_Base):
    async def test_concurrent_load_through_the_queue(self) -> None:
        """
        200 queries at once on a pool of 5: 195 wait in its queue, all
        come back right, served by exactly 5 backends.
        """
        pool = await self.pool(5)
        ds = [
            pool.runQuery("SELECT %s::int, pg_backend_pid()", (i,)) for i in range(200)
        ]
        self.assertEqual(len(pool._semaphore.waiting), 195)
        results = await gatherResults(ds)
        self.assertEqual([rows[0][0] for rows in results], list(range(200)))
        self.assertEqual(len({rows[0][1] for rows in results}), 5)
        self.assertEqual(len(pool._semaphore.waiting), 0)
        self.assertEqual(len(pool.connections), 5)

    async def test_concurrent_interactions(self) -> None:
        pool = await self.pool(5)
        await pool.runOperation("CREATE TABLE hits (n int)")

        @interaction
        async def hit(cursor: Any, n: int) -> int:
            await cursor.execute("INSERT INTO hits VALUES (%s)", (n,))
            await cursor.execute("SELECT count(*) FROM hits WHERE n = %s", (n,))
            return int(cursor.fetchone()[0])

        counts = await gatherResults([pool.runInteraction(hit, i) for i in range(100)])
        self.assertEqual(counts, [1] * 100)
        self.assertEqual(
            await pool.runQuery("SELECT count(*), sum(n) FROM hits"), [(100, 4950)]
        )


class TransactionTests(_Base):
    async def setUpAccounts(self) -> Any:
        pool = await self.pool(2)
        await pool.runOperation(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)"
        )
        await pool.runOperation("INSERT INTO accounts VALUES (1, 100), (2, 0)")
        return pool

    async def balances(self, pool: Any) -> list[tuple[int, int]]:
        rows = await pool.runQuery("SELECT id, balance FROM accounts ORDER BY id")
        return [tuple(r) for r in rows]

    async def test_commit_and_rollback(self) -> None:
        pool = await self.setUpAccounts()

        @interaction
        async def transfer(cursor: Any, amount: int) -> int:
            await cursor.execute(
                "UPDATE accounts SET balance = balance - %s WHERE id = 1", (amount,)
            )
            await cursor.execute(
                "UPDATE accounts SET balance = balance + %s WHERE id = 2", (amount,)
            )
            await cursor.execute("SELECT balance FROM accounts WHERE id = 1")
            balance = int(cursor.fetchone()[0])
            if balance < 0:
                raise ValueError("overdrawn")
            return balance

        self.assertEqual(await pool.runInteraction(transfer, 30), 70)
        self.assertEqual(await self.balances(pool), [(1, 70), (2, 30)])
        await self.assertFailure(pool.runInteraction(transfer, 100), ValueError)
        self.assertEqual(await self.balances(pool), [(1, 70), (2, 30)])

    async def test_sql_error_rolls_back(self) -> None:
        pool = await self.setUpAccounts()

        @interaction
        async def bad(cursor: Any) -> None:
            await cursor.execute("UPDATE accounts SET balance = 0")
            await cursor.execute("INSERT INTO accounts VALUES (1, 5)")

        await self.assertFailure(pool.runInteraction(bad), psycopg2.IntegrityError)
        self.assertEqual(await self.balances(pool), [(1, 100), (2, 0)])
        results = await gatherResults([pool.runQuery("SELECT 1") for _ in range(10)])
        self.assertEqual(results, [[(1,)]] * 10)

    async def test_isolated_while_open(self) -> None:
        """
        An interaction paused on a Deferred keeps its transaction open: the
        server shows it idle in transaction, other connections do not see
        its write until it commits; a rolled-back one is never seen.
        """
        pool = await self.setUpAccounts()
        admin = self.admin
        for outcome, before, after in (("commit", 0, 1), ("rollback", 1, 1)):
            gate: Deferred[None] = Deferred()
            self.addCleanup(release, gate)

            @interaction
            async def paused(cursor: Any) -> None:
                await cursor.execute(
                    "UPDATE accounts SET balance = balance + 1 WHERE id = 2"
                )
                await gate  # noqa: B023 (the gate of this iteration)
                if outcome == "rollback":  # noqa: B023
                    raise ValueError("roll back")

            d = pool.runInteraction(paused)
            await self.until_backends(admin, "UPDATE accounts", "idle in transaction")
            self.assertEqual(await self.balances(pool), [(1, 100), (2, before)])
            gate.callback(None)
            if outcome == "commit":
                await d
            else:
                await self.assertFailure(d, ValueError)
            self.assertEqual(await self.balances(pool), [(1, 100), (2, after)])
            self.assertEqual(await self.backends(admin, "", "idle in transaction"), [])


class NotifyTests(_Base):
    async def test_listen_notify(self) -> None:
        listener = await self.connect()
        notifier = await self.connect()
        received: list[tuple[str, str]] = []
        done: Deferred[None] = Deferred()

        def observe(notify: Any) -> None:
            received.append((notify.channel, notify.payload))
            if notify.payload == "done":
                done.callback(None)

        listener.addNotifyObserver(observe)
        await listener.runOperation("LISTEN events")
        for i in range(50):
            await notifier.runOperation("SELECT pg_notify('events', %s)", (str(i),))

        @interaction
        async def notify_then_fail(cursor: Any) -> None:
            await cursor.execute("SELECT pg_notify('events', 'rolled back')")
            raise ValueError("roll back")

        await self.assertFailure(notifier.runInteraction(notify_then_fail), ValueError)
        await notifier.runInteraction(lambda c: c.execute("NOTIFY events, 'committed'"))
        # The listener is busy with a query while these arrive.
        busy = listener.runQuery("SELECT pg_sleep(0.2)")
        await notifier.runOperation("NOTIFY events, 'while busy'")
        await busy
        await notifier.runOperation("NOTIFY events, 'done'")
        await done
        expected = [("events", str(i)) for i in range(50)]
        expected += [
            ("events", "committed"),
            ("events", "while busy"),
            ("events", "done"),
        ]
        self.assertEqual(received, expected)


class CancelTests(_Base):
    async def test_cancel_running_query(self) -> None:
        conn = await self.connect()
        admin = self.admin
        d = conn.runQuery("SELECT pg_sleep(60) -- cancel me")
        await self.until_backends(admin, "cancel me")
        conn.cancel(d)
        await self.assertFailure(d, CancelledError)
        self.assertEqual(await self.backends(admin, "cancel me", "active"), [])
        self.assertEqual(await conn.runQuery("SELECT 1"), [(1,)])

    async def test_cancel_through_pool(self) -> None:
        """A running query is cancelled; a queued one leaves the queue."""
        pool = await self.pool(1)
        admin = self.admin
        running = pool.runQuery("SELECT pg_sleep(60) -- pool victim")
        queued = pool.runQuery("SELECT 2")
        await self.until_backends(admin, "pool victim")
        queued.cancel()
        await self.assertFailure(queued, CancelledError)
        cancel(running)
        await self.assertFailure(running, CancelledError)
        self.assertEqual(await pool.runQuery("SELECT 3"), [(3,)])
        self.assertEqual(len(pool._semaphore.waiting), 0)


def _reconnectingConnection(reactor: Any, cooperator: Any) -> txpostgres.Connection:
    detector = reconnection.DeadConnectionDetector(reactor=reactor)
    return txpostgres.Connection(reactor, cooperator, detector=detector)


class ReconnectingPool(txpostgres.ConnectionPool):
    """A pool whose connections reconnect when the server drops them."""

    connectionFactory = staticmethod(_reconnectingConnection)


class TerminateTests(_Base):
    async def test_terminated_mid_query(self) -> None:
        """
        The query's Deferred fails with OperationalError; the connection
        then fails further queries at once (no hang), and closes cleanly.
        """
        conn = await self.connect()
        admin = self.admin
        d = conn.runQuery("SELECT pg_sleep(60) -- terminate me")
        (pid,) = await self.until_backends(admin, "terminate me")
        self.assertEqual(
            await admin.runQuery("SELECT pg_terminate_backend(%s)", (pid,)), [(True,)]
        )
        await self.assertFailure(d, psycopg2.OperationalError)
        self.assertTrue(conn.closed)
        await self.assertFailure(conn.runQuery("SELECT 1"), psycopg2.InterfaceError)

    async def test_pool_recovers(self) -> None:
        pool = await self.pool(5, ReconnectingPool)
        admin = self.admin
        recovered: Deferred[None] = Deferred()
        for conn in pool.connections:
            conn.detector.addRecoveryHandler(lambda: recovered.callback(None))

        async def pids() -> set[int]:
            ds = [
                pool.runQuery("SELECT pg_backend_pid(), pg_sleep(0.05)")
                for _ in range(5)
            ]
            return {rows[0][0] for rows in await gatherResults(ds)}

        before = await pids()
        self.assertEqual(len(before), 5)
        victim = pool.runQuery("SELECT pg_sleep(60) -- pool victim")
        (pid,) = await self.until_backends(admin, "pool victim")
        await admin.runQuery("SELECT pg_terminate_backend(%s)", (pid,))
        await self.assertFailure(victim, psycopg2.OperationalError)
        await recovered
        after = await pids()
        self.assertEqual(len(after), 5)
        self.assertNotIn(pid, after)
        self.assertEqual(len(before & after), 4)
        results = await gatherResults(
            [pool.runQuery("SELECT %s", (i,)) for i in range(100)]
        )
        self.assertEqual(results, [[(i,)] for i in range(100)])

    async def test_terminated_while_idle(self) -> None:
        """
        A connection the server drops while it is idle: txpostgres reads
        the error as the reactor reports the socket readable, and logs it
        (as it does on every reactor); the connection is closed, and a
        query fails at once with InterfaceError. With a
        DeadConnectionDetector, the connection comes back.
        """
        conn = await self.connect()
        back = _reconnectingConnection(reactor, None)
        await back.connect(self.dsn)
        self.addCleanup(back.close)
        recovered: Deferred[None] = Deferred()
        back.detector.addRecoveryHandler(lambda: recovered.callback(None))
        pids = [
            (await c.runQuery("SELECT pg_backend_pid()"))[0][0] for c in (conn, back)
        ]
        await self.admin.runQuery(
            "SELECT pg_terminate_backend(pid) FROM unnest(%s) AS pid", (pids,)
        )
        for _ in range(500):
            if conn.closed:
                break
            await deferLater(reactor, 0.02)
        self.assertTrue(conn.closed)
        await self.assertFailure(conn.runQuery("SELECT 1"), psycopg2.InterfaceError)
        await recovered
        (pid,) = (await back.runQuery("SELECT pg_backend_pid()"))[0]
        self.assertNotIn(pid, pids)
        logged = self.flushLoggedErrors(psycopg2.OperationalError)
        self.assertEqual(len(logged), 2)


class ReactorTests(TestCase):
    def test_reactor_under_test(self) -> None:
        """The module runs on the reactor tests/test_integration.py asked for."""
        check_reactor(reactor)
