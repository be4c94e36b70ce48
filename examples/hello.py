"""
The example `make run` serves: the smallest useful WSGI application.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


def application(
    environ: dict[str, object], start_response: Callable[..., object]
) -> Iterable[bytes]:
    body = b"Hello, world!"
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]
