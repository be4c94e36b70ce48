#!/usr/bin/env python
"""
A Scrapy crawl of a local site, pages per second, on our reactor beside
Twisted's asyncio reactor on the default asyncio loop and on uvloop, in one
run (issue 12: the crawl at least 1.3x Twisted's asyncio reactor).

Usage::

    python benchmarks/scrapy_bench.py [--smoke] [--python PATH] [--repeats N]

The site
--------
C{--pages} (2,000; 300 with C{--smoke}) static HTML pages of about 3 KiB,
each with 20 links: to the next page (so every page is reached from the
first) and to 19 others chosen by a fixed formula, so the crawl is the same
graph every run. nginx serves them (one worker process, access log off,
pinned to CPU 1): a C server, so the crawler, not the site, sets the rate.

The crawl
---------
One Scrapy process per run, pinned to CPU 0, with C{TWISTED_REACTOR} (and
C{ASYNCIO_EVENT_LOOP}) naming the reactor: ``rust``
(C{twisted_shim.reactor.RustReactor}), ``asyncio``
(C{twisted.internet.asyncioreactor.AsyncioSelectorReactor} on the default
loop) or ``asyncio-uvloop`` (the same reactor on C{uvloop.Loop}). The spider
starts at the first page, counts each response, and follows every link
(Scrapy's duplicate filter keeps each page to one request), with 16
concurrent requests (all to one host), no delay, no robots.txt, no
cookies, logging at WARNING. The run is timed from C{spider_opened} to
C{spider_closed}: pages per second, and the crawler's CPU time per page
(C{getrusage} over the same span). A run that does not crawl every page is
an error. Best rate and lowest CPU of C{--repeats} (3) runs per reactor, the
reactors taking turns.

Scrapy is not a dependency of the project: the worker runs under
C{--python}, by default C{.venv-peers/bin/python}, the peers' virtualenv
C{make conformance-peers} uses (made or refreshed here the same way, from
C{requirements-peers.txt}), with this tree's twisted_shim first on its path.
Output: a table and C{benchmarks/results/scrapy.json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
SERVER_CPU, CRAWLER_CPU = "1", "0"
LINKS = 20
RUN_TIMEOUT_S = 300

#: What each reactor name means to Scrapy: TWISTED_REACTOR, ASYNCIO_EVENT_LOOP.
REACTORS: dict[str, tuple[str, str | None]] = {
    "rust": ("twisted_shim.reactor.RustReactor", None),
    "asyncio": ("twisted.internet.asyncioreactor.AsyncioSelectorReactor", None),
    "asyncio-uvloop": (
        "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
        "uvloop.Loop",
    ),
}
_RUN_TAG = "@@RUN "


# --------------------------------------------------------------------------
# The site


def links_of(page: int, pages: int) -> list[int]:
    """The pages C{page} links to: the next one, then 19 by a fixed formula."""
    out = [(page + 1) % pages]
    out += [(page * 7919 + k * 104729 + 13) % pages for k in range(1, LINKS)]
    return out


def write_site(directory: Path, pages: int) -> None:
    filler = " ".join(f"word{k}" for k in range(300))
    for page in range(pages):
        anchors = "\n".join(
            f'<li><a href="/p{n}.html">page {n}</a></li>' for n in links_of(page, pages)
        )
        html = (
            f"<!doctype html><html><head><title>Page {page}</title></head>"
            f"<body><h1>Page {page}</h1><p>{filler}</p><ul>{anchors}</ul>"
            "</body></html>\n"
        )
        (directory / f"p{page}.html").write_text(html)


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {root}/site;
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx) and os.geteuid() == 0 and shutil.which("apt-get"):
        print("nginx not found: running `apt-get install -y nginx`", flush=True)
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "nginx"]):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        raise RuntimeError("nginx is not installed")
    (root / "tmp").mkdir(exist_ok=True)
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=root, port=port))
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, nginx, "-c", str(conf), "-p", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/p0.html", timeout=1):
                return proc, port
        except urllib.error.HTTPError as e:
            proc.kill()
            raise RuntimeError(f"nginx answered {e.code} for the first page") from e
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"nginx did not answer: {(root / 'error.log').read_text()}")


# --------------------------------------------------------------------------
# The worker: one crawl, run under the peers' interpreter.


def worker(reactor: str, url: str, pages: int) -> int:
    from scrapy import Request, Spider, signals
    from scrapy.crawler import CrawlerProcess

    reactor_path, loop_path = REACTORS[reactor]
    span: dict[str, float] = {}

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    class Crawl(Spider):
        name = "crawl"
        seen = 0

        async def start(self) -> Any:
            yield Request(url)

        def parse(self, response: Any) -> Any:
            Crawl.seen += 1
            for href in response.css("a::attr(href)").getall():
                yield response.follow(href, self.parse)

    def opened() -> None:
        span["t0"], span["c0"] = time.perf_counter(), cpu()

    def closed() -> None:
        span["t1"], span["c1"] = time.perf_counter(), cpu()

    settings: dict[str, Any] = {
        "TWISTED_REACTOR": reactor_path,
        "CONCURRENT_REQUESTS": 16,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
        "DOWNLOAD_DELAY": 0,
        "ROBOTSTXT_OBEY": False,
        "COOKIES_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "LOG_LEVEL": "WARNING",
    }
    if loop_path is not None:
        settings["ASYNCIO_EVENT_LOOP"] = loop_path
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(Crawl)
    crawler.signals.connect(opened, signals.spider_opened)
    crawler.signals.connect(closed, signals.spider_closed)
    process.crawl(crawler)
    process.start()
    from twisted.internet import reactor as installed

    result = {
        "pages": Crawl.seen,
        "seconds": span["t1"] - span["t0"],
        "cpu_s": span["c1"] - span["c0"],
        "reactor": f"{type(installed).__module__}.{type(installed).__name__}",
    }
    print(_RUN_TAG + json.dumps(result), flush=True)
    return 0 if Crawl.seen == pages else 1


# --------------------------------------------------------------------------
# The harness


def _env() -> dict[str, str]:
    """The worker's environment: this tree's twisted_shim (built in place by
    C{make build}) first on its path, whatever the interpreter has."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def crawl(python: str, reactor: str, url: str, pages: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            *("taskset", "-c", CRAWLER_CPU, python, str(Path(__file__).resolve())),
            *("--worker", reactor, "--url", url, "--pages", str(pages)),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=ROOT,
        env=_env(),
    )
    runs = [line for line in out.stdout.splitlines() if line.startswith(_RUN_TAG)]
    if not runs:
        raise RuntimeError(
            f"{reactor}: no result (exit {out.returncode}): {out.stderr[-2000:]}"
        )
    run = json.loads(runs[-1][len(_RUN_TAG) :])
    if out.returncode != 0 or run["pages"] != pages:
        raise RuntimeError(
            f"{reactor}: crawled {run['pages']} of {pages} pages: {out.stderr[-2000:]}"
        )
    run["rate"] = run["pages"] / run["seconds"]
    run["cpu_us_per_page"] = run["cpu_s"] / run["pages"] * 1e6
    return run


def has_scrapy(python: str) -> bool:
    probe = subprocess.run(
        [python, "-c", "import scrapy, uvloop, twisted_shim._core"],
        capture_output=True,
        timeout=60,
        cwd=tempfile.gettempdir(),
        env=_env(),
    )
    return probe.returncode == 0


def default_python() -> str:
    if PEERS_PYTHON.exists():
        return str(PEERS_PYTHON)
    return sys.executable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    parser.add_argument(
        "--smoke", action="store_true", help="a small site, one run each"
    )
    parser.add_argument("--pages", type=int, help="pages in the site")
    parser.add_argument("--repeats", type=int, help="runs per reactor")
    parser.add_argument(
        "--python", help="the interpreter with Scrapy (default: .venv-peers)"
    )
    parser.add_argument("--json", help="JSON output path")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pages = args.pages or (300 if args.smoke else 2000)
    if args.worker:
        return worker(args.worker, args.url, pages)
    repeats = args.repeats or (1 if args.smoke else 3)
    if args.python is None:
        # The peers' virtualenv, made or refreshed as make conformance-peers
        # makes it (Scrapy, uvloop and Twisted at the project's pins).
        sys.path.insert(0, str(ROOT))
        from conformance import run_asyncio_peers as peers

        peers.ensure_venv(peers.VENV, peers.REQUIREMENTS, peers.twisted_requirement())
    python = args.python or default_python()
    if not has_scrapy(python):
        print(
            f"{python} cannot import scrapy, uvloop and twisted_shim: "
            "run `make conformance-peers` (it makes .venv-peers) or pass --python",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(HERE))
    from _machine import machine_meta
    from _report import markdown_table, plain_table, print_markdown, write_json

    results: dict[str, list[dict[str, Any]]] = {name: [] for name in REACTORS}
    with tempfile.TemporaryDirectory(prefix="scrapy-bench-") as tmp:
        root = Path(tmp)
        # nginx's worker runs as an unprivileged user: it must read the site.
        root.chmod(0o755)
        (root / "site").mkdir(mode=0o755)
        write_site(root / "site", pages)
        nginx, port = start_nginx(root)
        url = f"http://127.0.0.1:{port}/p0.html"
        try:
            for _ in range(repeats):
                for name in REACTORS:
                    run = crawl(python, name, url, pages)
                    results[name].append(run)
                    print(
                        f"  {name}: {run['rate']:,.0f} pages/s, "
                        f"{run['cpu_us_per_page']:,.0f} µs CPU/page ({run['reactor']})",
                        flush=True,
                    )
        finally:
            nginx.terminate()
            nginx.wait(10)
    best = {n: max(r["rate"] for r in runs) for n, runs in results.items()}
    cpu = {n: min(r["cpu_us_per_page"] for r in runs) for n, runs in results.items()}
    headers = ["reactor", "pages/s", "CPU µs/page", "rate vs asyncio", "rate vs uvloop"]
    rows = [
        [
            n,
            f"{best[n]:,.0f}",
            f"{cpu[n]:,.0f}",
            f"{best[n] / best['asyncio']:.2f}x",
            f"{best[n] / best['asyncio-uvloop']:.2f}x",
        ]
        for n in REACTORS
    ]
    right = [False, True, True, True, True]
    meta = {
        **machine_meta(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pages": pages,
        "repeats": repeats,
        "links_per_page": LINKS,
    }
    header = [
        f"Scrapy crawl of {pages:,} local pages (nginx on CPU {SERVER_CPU}, "
        f"crawler on CPU {CRAWLER_CPU}), best of {repeats}; {meta['cpu']}",
    ]
    print()
    print(header[0])
    print(plain_table(headers, rows, right))
    print_markdown(header, markdown_table(headers, rows, right), [])
    path = (
        Path(args.json)
        if args.json
        else RESULTS_DIR / ("scrapy-smoke.json" if args.smoke else "scrapy.json")
    )
    write_json(path, {"meta": meta, "runs": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
