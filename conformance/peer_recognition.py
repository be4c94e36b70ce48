"""
The checks Scrapy and Daphne make for Twisted's asyncio reactor, made for
real against ours (run in C{.venv-peers} by L{conformance.run_asyncio_peers},
before the suites).

    python -m conformance.peer_recognition

Each check runs in a fresh interpreter (a reactor installs once per process)
and prints C{ok: CHECK} or C{FAILED: CHECK} with the child's output; the
module exits non-zero if any failed. What they establish:

    - Scrapy, with our reactor installed first: C{is_asyncio_reactor_installed()};
      C{install_reactor} and C{verify_installed_reactor} with C{TWISTED_REACTOR}
      naming either our class or C{AsyncioSelectorReactor} (Scrapy's default)
      accept it and leave it installed, and C{asyncio.get_event_loop()} is
      then its face; C{verify_installed_asyncio_event_loop} accepts the loop
      classes the face is (C{asyncio.SelectorEventLoop},
      L{twisted_shim.aio.RustEventLoop}) and refuses another (C{uvloop.Loop}),
      as Scrapy does for Twisted's asyncio reactor on another loop.
    - Scrapy crawls on it: C{CrawlerProcess} with C{TWISTED_REACTOR} naming our
      class installs ours; C{AsyncCrawlerProcess} (which names
      C{AsyncioSelectorReactor}, always) runs on ours installed before it. The
      spider's callback is a coroutine that awaits an asyncio future, and the
      page is a C{data:} URL (no network).
    - Daphne: importing C{daphne.server} with our reactor installed keeps it
      (Daphne uninstalls a reactor that is not an C{AsyncioSelectorReactor},
      with a warning), and C{reactor._asyncioEventloop} is the face.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

TIMEOUT = 120

#: The spider of the crawl checks: one data: URL, a coroutine callback that
#: awaits asyncio and says which loop and reactor it ran on.
_SPIDER = """
import asyncio, sys
import scrapy

class Probe(scrapy.Spider):
    name = "probe"
    start_urls = ["data:,hello"]

    async def parse(self, response):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(0.01, fut.set_result, response.text)
        text = await fut
        from twisted.internet import reactor
        seen.append((text, type(loop).__name__, type(reactor).__name__,
                     loop is reactor._asyncioEventloop))
        yield {"text": text}

seen = []
"""

#: Check -> the code it runs, in parts (each dedented on its own).
CHECKS: dict[str, tuple[str, ...]] = {
    "scrapy: the utils.reactor checks accept our reactor installed first": (
        """
        import asyncio, warnings
        warnings.simplefilter("error")
        import twisted_shim
        r = twisted_shim.install()
        from scrapy.utils import reactor as sr
        assert sr.is_asyncio_reactor_installed()
        for path in ("twisted_shim.reactor.RustReactor",
                     "twisted.internet.asyncioreactor.AsyncioSelectorReactor"):
            sr.install_reactor(path)
            sr.verify_installed_reactor(path)
            from twisted.internet import reactor
            assert reactor is r, reactor
            assert asyncio.get_event_loop() is r._asyncioEventloop
            sr.verify_installed_asyncio_event_loop("asyncio.SelectorEventLoop")
            sr.verify_installed_asyncio_event_loop("twisted_shim.aio.RustEventLoop")
            try:
                sr.verify_installed_asyncio_event_loop("uvloop.Loop")
            except RuntimeError:
                pass
            else:
                raise AssertionError("uvloop.Loop accepted")
        try:
            sr.verify_installed_reactor("twisted.internet.epollreactor.EPollReactor")
        except RuntimeError:
            pass
        else:
            raise AssertionError("EPollReactor accepted")
        """,
    ),
    "scrapy: TWISTED_REACTOR naming our class installs it": (
        """
        from scrapy.utils.reactor import install_reactor, is_asyncio_reactor_installed
        install_reactor("twisted_shim.reactor.RustReactor")
        from twisted.internet import reactor
        assert type(reactor).__module__ == "twisted_shim.reactor", type(reactor)
        assert is_asyncio_reactor_installed()
        """,
    ),
    "scrapy: CrawlerProcess with TWISTED_REACTOR naming our class crawls on it": (
        _SPIDER,
        """
        from scrapy.crawler import CrawlerProcess
        p = CrawlerProcess({"TWISTED_REACTOR": "twisted_shim.reactor.RustReactor",
                            "LOG_LEVEL": "WARNING"})
        p.crawl(Probe)
        p.start()
        assert seen == [("hello", "RustEventLoop", "RustReactor", True)], seen
        """,
    ),
    "scrapy: AsyncCrawlerProcess crawls on our reactor installed before it": (
        _SPIDER,
        """
        import twisted_shim
        twisted_shim.install()
        from scrapy.crawler import AsyncCrawlerProcess
        p = AsyncCrawlerProcess({"LOG_LEVEL": "WARNING"})
        p.crawl(Probe)
        p.start()
        assert seen == [("hello", "RustEventLoop", "RustReactor", True)], seen
        """,
    ),
    "daphne: daphne.server keeps our reactor installed": (
        """
        import sys, warnings
        warnings.simplefilter("error", UserWarning)
        import twisted_shim
        r = twisted_shim.install()
        import daphne.server
        assert sys.modules["twisted.internet.reactor"] is r
        assert daphne.server.reactor is r
        from twisted_shim import aio
        assert r._asyncioEventloop is aio.loop_of(r)
        """,
    ),
}


def run_check(parts: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    code = "\n".join(textwrap.dedent(part) for part in parts)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def main() -> int:
    failed = 0
    for name, parts in CHECKS.items():
        try:
            proc = run_check(parts)
        except subprocess.TimeoutExpired:
            print(f"FAILED: {name} (no answer in {TIMEOUT} s)")
            failed += 1
            continue
        if proc.returncode == 0:
            print(f"ok: {name}")
            continue
        failed += 1
        print(f"FAILED: {name} (exit {proc.returncode})")
        for line in (proc.stdout + proc.stderr).splitlines()[-20:]:
            print(f"    {line}")
    print(f"{len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
