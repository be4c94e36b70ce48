"""
Importing the application a command line names: C{MODULE:APP} (C{APP} may
be dotted) or C{MODULE} alone, which means C{MODULE:application}.

Invariants: L{load_app} returns a callable or raises L{StartupError} with
one line naming the spec and the cause (whatever the import raised,
C{SystemExit} included); the current directory is searched first, as
gunicorn and uvicorn do. It must run after the reactor is installed (the
application may import C{twisted.internet.reactor}).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from twisted_shim.wsgi.startup import StartupError

if TYPE_CHECKING:
    from twisted_shim.wsgi.server import WSGIApplication

__all__ = ["load_app"]


def load_app(spec: str) -> WSGIApplication:
    """
    Import C{MODULE:APP} (C{APP} may be dotted; C{MODULE} alone means
    C{MODULE:application}). The current directory is searched first.

    @raise StartupError: the module or attribute cannot be imported, or is
        not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep:
        attr = "application"
    if not module_name or not attr:
        raise StartupError(f"malformed application {spec!r}: expected MODULE:APP")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (Exception, SystemExit) as e:
        detail = " ".join(str(e).split())
        name = type(e).__name__
        raise StartupError(
            f"cannot import {spec!r}: {name}: {detail}"
            if detail
            else f"cannot import {spec!r}: {name}"
        ) from None
    if not callable(obj):
        raise StartupError(
            f"{spec!r} is not a WSGI application: {type(obj).__name__} object is not callable"
        )
    app: WSGIApplication = obj
    return app
