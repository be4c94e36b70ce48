"""
Twisted's ReactorBuilder conformance suites, generated for our reactor.

Twisted's reactor tests (C{twisted.internet.test.test_core}, C{test_tcp}, ...)
are written once as "builders" and turned into one test class per reactor at
import time, from the fixed list C{ReactorBuilder._reactors}; C{--reactor}
does not change it. This module subclasses every builder that Twisted
instantiates for C{EPollReactor} and makes classes for two reactors, so
both run in the same process and the same way:

    - C{<Builder>_RustReactorTests}: L{twisted_shim.reactor.RustReactor};
    - C{<Builder>_EPollReactorTests}: Twisted's C{EPollReactor}, the reference.

Run it with C{python -m conformance.run_builders}, or load it with trial.
"""

from __future__ import annotations

import importlib

from twisted.internet.test.reactormixins import ReactorBuilder

#: The ReactorBuilder modules of Twisted's own test suite.
MODULES = [
    "twisted.internet.test.test_core",
    "twisted.internet.test.test_fdset",
    "twisted.internet.test.test_time",
    "twisted.internet.test.test_threads",
    "twisted.internet.test.test_tcp",
    "twisted.internet.test.test_udp",
    "twisted.internet.test.test_unix",
    "twisted.internet.test.test_tls",
    "twisted.internet.test.test_newtls",
    "twisted.internet.test.test_process",
    "twisted.internet.test.test_socket",
    "twisted.internet.test.test_stdio",
    "twisted.internet.test.test_win32events",
]

OURS = "twisted_shim.reactor.RustReactor"
REFERENCE = "twisted.internet.epollreactor.EPollReactor"
REACTORS = {"rust": OURS, "epoll": REFERENCE}

#: The generated class name for each reactor ends with this.
SUFFIX = {name: fqpn.split(".")[-1] + "Tests" for name, fqpn in REACTORS.items()}


def _builders(module: object) -> list[type[ReactorBuilder]]:
    """
    The builders C{module} turned into test classes for some reactor: the
    direct builder base of each generated class (kept in definition order).
    """
    seen: dict[type, None] = {}
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, ReactorBuilder)
            and value.__name__.endswith("_EPollReactorTests")
        ):
            seen[value.__bases__[0]] = None
    return list(seen)


def _generate() -> dict[str, type]:
    classes: dict[str, type] = {}
    for modname in MODULES:
        module = importlib.import_module(modname)
        short = modname.rsplit(".", 1)[-1]
        for builder in _builders(module):
            sub = type(
                builder.__name__,
                (builder,),
                {
                    "__module__": __name__,
                    "_reactors": list(REACTORS.values()),
                    # Remember where the builder came from, for the report.
                    "_twistedModule": short,
                },
            )
            sub.__qualname__ = builder.__name__
            for name, cls in sub.makeTestCaseClasses().items():
                cls.__module__ = __name__
                classes[name] = cls
    return classes


globals().update(_generate())
