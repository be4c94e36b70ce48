"""
txredisapi, unmodified, on the reactor trial runs (C{--reactor=rust} or
C{--reactor=epoll}), against a throwaway redis-server over TCP and over its
UNIX socket.

It proves, on that reactor and on both transports: GET/SET/INCR/DEL and
expiry; 1,000 commands pipelined explicitly (pipeline/execute_pipeline) and
1,000 issued at once on one connection, their replies in order; MULTI/EXEC,
DISCARD, and WATCH failing a transaction when another connection changed
the key; publish/subscribe with channels and patterns, every message
delivered in order; BLPOP that times out with nothing, and BLPOP woken by a
push from another connection while it waits; a connection pool spreading
blocking commands over its connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import txredisapi
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ClientCreator
from twisted.trial.unittest import TestCase

from integration._env import check_reactor, redis_address

reactor: Any = _reactor
T = TypeVar("T")

if TYPE_CHECKING:
    _Mixin = TestCase
else:
    _Mixin = object


class Subscriber(txredisapi.SubscriberProtocol):
    """Collects the messages it receives; fires C{got} at a count."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: list[tuple[Any, Any, Any]] = []
        self.want = 0
        self.got: Deferred[None] = Deferred()

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.messages.append((pattern, channel, message))
        if len(self.messages) == self.want:
            self.got.callback(None)


class _RedisTests(_Mixin):
    """The tests, for one transport (TCP or UNIX)."""

    timeout = 60
    unix = False

    async def connect(self, poolsize: int = 1) -> Any:
        host, port, path = redis_address()
        if self.unix:
            if poolsize == 1:
                conn = await txredisapi.UnixConnection(path, dbid=0, reconnect=False)
            else:
                conn = await txredisapi.UnixConnectionPool(
                    path, dbid=0, poolsize=poolsize, reconnect=False
                )
        elif poolsize == 1:
            conn = await txredisapi.Connection(host, port, dbid=0, reconnect=False)
        else:
            conn = await txredisapi.ConnectionPool(
                host, port, dbid=0, poolsize=poolsize, reconnect=False
            )
        self.addCleanup(conn.disconnect)
        return conn

    async def subscriber(self) -> Subscriber:
        host, port, path = redis_address()
        creator = ClientCreator(reactor, Subscriber)
        if self.unix:
            proto = await creator.connectUNIX(path)
        else:
            proto = await creator.connectTCP(host, port)

        async def close() -> None:
            gone = proto.whenDisconnected()
            proto.transport.loseConnection()
            await gone

        self.addCleanup(close)
        return proto  # type: ignore[no-any-return]

    async def setUp(self) -> None:  # type: ignore[override]
        check_reactor(reactor)
        self.redis = await self.connect()
        await self.redis.flushdb()

    async def test_get_set(self) -> None:
        r = self.redis
        self.assertEqual(await r.set("greeting", "hello"), "OK")
        self.assertEqual(await r.get("greeting"), "hello")
        self.assertIsNone(await r.get("missing"))
        self.assertEqual(await r.incr("counter"), 1)
        self.assertEqual(await r.incrby("counter", 41), 42)
        self.assertEqual(await r.delete("greeting"), 1)
        self.assertIsNone(await r.get("greeting"))
        await r.set("short", "lived", pexpire=1)
        await r.set("long", "lived", expire=100)
        self.assertEqual(await r.ttl("long"), 100)
        self.assertEqual(await r.exists("long"), 1)
        value = "\u00e9t\u00e9 " * 10000
        await r.set("big", value)
        self.assertEqual(await r.get("big"), value)

    async def test_explicit_pipeline(self) -> None:
        pipe = await self.redis.pipeline()
        for i in range(1000):
            pipe.set(f"k{i}", i)
        for i in range(1000):
            pipe.get(f"k{i}")
        replies = await pipe.execute_pipeline()
        self.assertEqual(replies, ["OK"] * 1000 + list(range(1000)))

    async def test_many_commands_at_once(self) -> None:
        """1,000 INCRs sent without waiting: replies 1..1000, in order."""
        replies = await gatherResults([self.redis.incr("n") for _ in range(1000)])
        self.assertEqual(replies, list(range(1, 1001)))

    async def test_multi_exec(self) -> None:
        t = await self.redis.multi()
        t.set("a", 1)
        t.incr("a")
        t.get("a")
        self.assertEqual(await t.commit(), ["OK", 2, 2])
        t = await self.redis.multi()
        t.set("a", 100)
        await t.discard()
        self.assertEqual(await self.redis.get("a"), 2)

    async def test_watch_conflict(self) -> None:
        other = await self.connect()
        await self.redis.set("w", 1)
        t = await self.redis.watch("w")
        await other.set("w", 2)
        await t.multi()
        t.set("w", 3)
        await self.assertFailure(t.commit(), txredisapi.WatchError)
        self.assertEqual(await self.redis.get("w"), 2)

    async def test_pubsub(self) -> None:
        sub = await self.subscriber()
        await sub.subscribe("news")
        await sub.psubscribe("sport.*")
        sub.want = 200
        for i in range(100):
            self.assertEqual(await self.redis.publish("news", f"n{i}"), 1)
            self.assertEqual(await self.redis.publish(f"sport.{i % 3}", f"s{i}"), 1)
        self.assertEqual(await self.redis.publish("nobody", "x"), 0)
        await sub.got
        news = [m for p, c, m in sub.messages if c == "news" and p is None]
        sport = [(p, c, m) for p, c, m in sub.messages if p == "sport.*"]
        self.assertEqual(news, [f"n{i}" for i in range(100)])
        self.assertEqual(
            sport, [("sport.*", f"sport.{i % 3}", f"s{i}") for i in range(100)]
        )

    async def test_blpop_times_out(self) -> None:
        self.assertIsNone(await self.redis.blpop(["queue"], timeout=0.2))

    async def test_blpop_woken_by_push(self) -> None:
        other = await self.connect()
        popped = self.redis.blpop(["queue"], timeout=30)
        answered: list[object] = []

        def answer(result: T) -> T:
            answered.append(result)
            return result

        popped.addBoth(answer)
        # The BLPOP is on the server before the push: it is the one blocked.
        for _ in range(500):
            info = await other.execute_command("INFO", "clients")
            if "blocked_clients:1" in info:
                break
        self.assertIn("blocked_clients:1", info)
        self.assertEqual(answered, [])
        await other.rpush("queue", "job")
        self.assertEqual(await popped, ["queue", "job"])

    async def test_pool_spreads_blocking_commands(self) -> None:
        """Three BLPOPs at once on a pool of 3 each take a connection."""
        pool = await self.connect(poolsize=3)
        pops = [pool.blpop([f"q{i}"], timeout=30) for i in range(3)]
        for i in range(3):
            await self.redis.rpush(f"q{i}", f"v{i}")
        self.assertEqual(
            await gatherResults(pops), [[f"q{i}", f"v{i}"] for i in range(3)]
        )
        self.assertEqual(await pool.get("nothing"), None)


class TCPTests(_RedisTests, TestCase):
    unix = False


class UNIXTests(_RedisTests, TestCase):
    unix = True


class ReactorTests(TestCase):
    def test_reactor_under_test(self) -> None:
        """The module runs on the reactor tests/test_integration.py asked for."""
        check_reactor(reactor)
