"""What CPU this is: its model name and the SIMD features the networks' kernels use.

Read from ``/proc/cpuinfo`` (Linux x86 and ARM; the Jetson's cores report
``asimd``, which is NEON). ``bench`` prints both so a figure names its CPU, and
the precision choice is cached per CPU model (INT8 pays only where the CPU has
fast integer dot products: AVX-512 VNNI, AVX-VNNI or NEON's dot product).
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

logger = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
# Feature names reported by bench, and the /proc/cpuinfo flags that mean each.
SIMD = {"avx2": ("avx2",), "avx512f": ("avx512f",), "avx512_vnni": ("avx512_vnni",), "avx_vnni": ("avx_vnni",),
        "neon": ("neon", "asimd")}


def _fields(text: str) -> dict[str, str]:
    """The first processor's ``key: value`` lines (every core repeats them)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip().lower(), value.strip())
    return out


def parse(text: str) -> dict:
    """``{"model": str, "simd": {feature: bool}}`` from the text of /proc/cpuinfo."""
    f = _fields(text)
    model = f.get("model name") or f.get("hardware") or f.get("model") or f.get("cpu model") or ""
    flags = set((f.get("flags") or f.get("features") or "").split())
    return {"model": model or platform.processor() or platform.machine(),
            "simd": {name: any(x in flags for x in names) for name, names in SIMD.items()}}


@functools.lru_cache(maxsize=1)
def cpu() -> dict:
    """This machine's CPU (an empty feature set where /proc/cpuinfo cannot be read)."""
    try:
        return parse(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return parse("")


def describe() -> str:
    """One line for reports and logs: the CPU model and which SIMD features it has."""
    c = cpu()
    return f"{c['model']} (" + ", ".join(f"{n} {'yes' if have else 'no'}" for n, have in c["simd"].items()) + ")"
