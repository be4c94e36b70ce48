"""
C{python -m twisted_shim serve MODULE:APP [options]}: the C{twisted-shim}
command line (L{twisted_shim.cli}).
"""

from __future__ import annotations

import sys

from twisted_shim.cli import main

if __name__ == "__main__":
    sys.exit(main())
