"""Large buffers go back to the operating system once freed, in stages that receive large requests.

glibc serves an allocation of at least M_MMAP_THRESHOLD bytes with its own mmap and unmaps it on free, but it
raises that threshold to the size of every such block freed (up to 32 MiB). After one multi-MB request, the next
ones come from the heap, where small allocations made in between pin the space: a tokenizer that received a burst
of multi-MB prompts (refused, but received) stayed tens of MB larger, more with every burst. Setting the threshold
turns that adjustment off.

The threshold sits above what the gateway allocates afresh on every read of a batch of stored vectors from Redis
(each MGET's copy of its vectors, a few hundred KiB): mapped and unmapped on each read, with their pages faulted in
again, such buffers were most of that read (bench/redis_mget.py measures it).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1024 * 1024  # glibc's default is 128 KiB before any adjustment


def return_large_buffers_to_os(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fixes glibc's mmap threshold (and trims the heap above twice that); False where libc is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * threshold_bytes))
    if not done:
        log.warning("could not set the allocator's mmap threshold: large freed buffers may stay resident")
    return done
