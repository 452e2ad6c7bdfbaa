"""Keeping freed memory in the process, so that training steps do not page-fault their tensors in every time.

A training step allocates and frees the same large tensors again and again (a 2000x500 CD weight gradient is 4 MB,
the fine-tuning gradients 10 MB). torch's CPU allocator hands these to glibc ``malloc``, which serves blocks above
its mmap threshold with fresh ``mmap`` calls and returns free memory at the top of the heap to the kernel once it
exceeds its trim threshold (both thresholds move with what was freed last); either way the next step's tensors
arrive as untouched pages, and every 4 KiB page costs a fault and the kernel zeroing it: 190-2,400 faults per CD
step of the 2000x500 layer with the defaults (the count moves with the process's allocation history), none after
:func:`keep_freed_memory` (tests/test_allocator.py). On a 2-core AMD EPYC VM, one thread, that step took
16.4-16.7 ms with glibc's defaults and 14.0-14.4 ms with the thresholds below, a fine-tuning step 24.1-26.5 ms
against 20.2-21.5 ms (``benchmarks/allreduce_step.py``, docs/benchmarks.md). With two ranks the zeroing also
takes memory bandwidth the other rank's step needs.

:func:`keep_freed_memory` raises both thresholds (``mallopt``), which keeps blocks up to 32 MiB (glibc's largest
mmap threshold) in the heap and lets up to ``trim_mb`` of free memory stay there for reuse. The peak resident
memory is unchanged (freed blocks are reused, not added); the process gives back less memory between peaks.
Linux/glibc only; elsewhere it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1       # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20   # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
_done = False


def keep_freed_memory(trim_mb: int = 512) -> bool:
    """Raises glibc's mmap and trim thresholds for this process (once); whether it could."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt here: large tensors keep the allocator's defaults")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, trim_mb * 2**20))
    _done = ok
    if not ok:
        log.warning("mallopt refused the allocator thresholds: training steps page-fault their tensors")
    return ok
