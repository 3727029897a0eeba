"""Memory settings: the C allocator's for tools that move large buffers through worker
threads, and the cycle collector's while a large library loads.

glibc's malloc gives every thread that allocates its own arena (up to eight per core), and
after a large block is freed it raises its mmap threshold to that block's size, so later
blocks of a few MiB come from those arenas and stay resident once freed. ``save`` and
``download`` pass MiB-sized pieces through deflate, hash and S3 transfer threads: measured
with the etcd footprint bench (``python -m bench etcd_footprint``), that kept 5-17 MiB per
run that no buffer used any more. Two arenas and a fixed threshold (every block of at least
1 MiB is its own mapping, returned to the kernel when freed) keep the tool's RSS at what its
buffers hold: 50 -> 46 MiB for a local save of 64 MB, 70 -> 54 MiB with S3, 62 -> 54 MiB for
``download --s3-backup``. Code that moves MiB pieces reuses its buffers and keeps each
allocation under the threshold (:mod:`sidekick.etcd.archive`), or every piece would be mapped
and faulted in anew.

Set at run time with ``mallopt`` (the ``MALLOC_*`` environment variables would reach every
child process too, etcdctl included); without glibc (musl, another libc) nothing changes.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# <malloc.h>
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

ARENAS = 2
MMAP_THRESHOLD = 1 << 20


def bound_malloc() -> bool:
    """Apply :data:`ARENAS` and :data:`MMAP_THRESHOLD`; False when the C library has no ``mallopt``."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_ARENA_MAX, ARENAS)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    log.debug("malloc bounds: %s", "applied" if applied else "refused")
    return applied


class _Collector:
    """Who holds the cycle collector paused, and whether it ran before the first of them."""

    lock = threading.Lock()
    holders = 0
    was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cycle collector while a library loads (botocore and its S3 models).

    Loading creates some 90,000 objects that live until exit; every collection in between
    walks them all and frees nothing: a third of botocore's load time here (0.29 -> 0.20 s,
    import and one S3 client). Counted, so that the S3 warm-up thread and the main thread may
    overlap: the collector runs again when the last one leaves, if it ran before the first.
    """
    with _Collector.lock:
        if _Collector.holders == 0:
            _Collector.was_enabled = gc.isenabled()
            gc.disable()
        _Collector.holders += 1
    try:
        yield
    finally:
        with _Collector.lock:
            _Collector.holders -= 1
            if _Collector.holders == 0 and _Collector.was_enabled:
                gc.enable()
