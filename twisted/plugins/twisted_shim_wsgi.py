# `twist --reactor=rust shim-wsgi MODULE:APP` / twistd: the WSGI host as a
# Twisted service plugin (twisted_shim/wsgi/tap.py). Kept free of heavy
# imports: loading Twisted's plugin cache imports this file.
from twisted.application.service import ServiceMaker

shimWSGI = ServiceMaker(
    "twisted_shim WSGI host",
    "twisted_shim.wsgi.tap",
    "Serve a WSGI application on twisted_shim's Rust HTTP/1.1 host",
    "shim-wsgi",
)
