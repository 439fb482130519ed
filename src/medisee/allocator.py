"""Keep freed tensor memory in the process on glibc (CPU speed).

PyTorch's CPU allocator has no cache: every tensor above glibc's mmap threshold (128 KiB,
raised dynamically up to 32 MiB) is a fresh ``mmap`` whose pages the kernel zero-fills on
first touch, and freeing it unmaps them again. The TinyViT encoder and the grounding head
allocate such tensors by the hundred per call, so on our 2-core machine a third of the
CPU time was system time. Serving large blocks from the heap and not trimming it keeps
the pages mapped between calls (on a quiet 2-core machine the LiteMedSAM encoder went
from 2.0 to 1.3 s per image, its system time from 1.3 s to under 0.1 s;
``benchmarks/experiments/encoder_allocator.py``).

It changes a process-wide setting of the C library, so the library never sets it: the
``medisee`` command, which owns its process, calls ``tune_from_environment`` first, and
``MEDISEE_MALLOC_TUNING=0`` leaves the allocator alone. Code that embeds medisee calls
``keep_freed_memory`` itself if it wants the speed (the demo on a 2-core AMD host, runs
alternated: 34.3 min without, 28.8 with, the same weights byte for byte;
``benchmarks/experiments/demo_allocator.json``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks below this come from the heap; larger ones (rare) are still mmapped
MMAP_THRESHOLD = 1 << 30
#: free heap above this is returned to the OS
TRIM_THRESHOLD = 1 << 31

logger = logging.getLogger(__name__)


#: ``0`` keeps the CLI from tuning the allocator; ``1`` (or unset) lets it
ENV_VAR = "MEDISEE_MALLOC_TUNING"


def tune_from_environment() -> bool:
    """``keep_freed_memory()`` unless ``MEDISEE_MALLOC_TUNING=0``; returns whether it ran
    and took effect. Raises ``ValueError`` for any other value than ``0`` or ``1``."""
    value = os.environ.get(ENV_VAR, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_VAR} must be 0 (leave the allocator alone) or 1, not {value!r}")
    return value == "1" and keep_freed_memory()


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (``mallopt``).

    Returns whether they were set: a no-op (False) off Linux/glibc. Call it once, early,
    from an entry point, never at import.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD - 1)
    )
    logger.debug("glibc mallopt thresholds set: %s", ok)
    return ok
