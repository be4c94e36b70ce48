# Declares the reactor "rust" to twisted.application.reactors, so that
# installReactor("rust"), trial --reactor=rust and twist --reactor=rust find it.
# Kept free of heavy imports: loading Twisted's plugin cache imports this file.
from twisted.application.reactors import Reactor

rust = Reactor(
    "rust",
    "twisted_shim.reactor",
    "twisted_shim: Twisted's posix reactor on an event loop written in Rust",
)
