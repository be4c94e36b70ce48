"""
twisted_shim: a Twisted reactor whose event loop is Rust.

    import twisted_shim
    twisted_shim.install()          # before anything imports the reactor
    from twisted.internet import reactor

or C{installReactor("rust")}, C{trial --reactor=rust}, C{twist --reactor=rust}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["install", "__version__"]

if TYPE_CHECKING:
    from twisted_shim.reactor import RustReactor


def install() -> RustReactor:
    """
    Install the Rust reactor as C{twisted.internet.reactor} and return it;
    its asyncio face becomes this thread's current event loop (see
    L{twisted_shim.reactor.install}).

    @raise twisted.internet.error.ReactorAlreadyInstalledError: if a reactor
        is installed already.
    """
    from twisted_shim.reactor import install as _install

    return _install()
