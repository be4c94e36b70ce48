"""
What every benchmark script reports about the machine and the build, so
runs can be told apart: the CPU model, the Rust extension's hash and mtime,
the platform and the load when the run began (L{machine_meta}).
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def core_build() -> str:
    """The built extension's file name, hash and mtime."""
    so = sorted((ROOT / "twisted_shim").glob("_core*.so"))
    if not so:
        return "not built"
    digest = hashlib.sha256(so[0].read_bytes()).hexdigest()[:12]
    mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(so[0].stat().st_mtime))
    return f"{so[0].name} sha256:{digest} built {mtime}Z"


def machine_meta() -> dict[str, object]:
    """The fields every benchmark's JSON and header carry about the machine
    and the build, taken when a run begins."""
    return {
        "core_build": core_build(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg()[0],
    }
