"""Keep freed tensor memory in the process heap (glibc), so large CPU tensors are not mapped anew at every step.

glibc serves every allocation above its mmap threshold (at most 32 MB by default) with a fresh mmap and unmaps it on
free, so each large activation of a CPU training step costs a page fault per 4 kB page touched. Raising the mmap and
trim thresholds lets freed blocks be reused; the resident peak grows by the memory the heap keeps (docs/deep_models.md
gives the measured effect)."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_THRESHOLD = 2**31 - 1  # mallopt takes an int


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once (every prediction calls this); False where the
    C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
