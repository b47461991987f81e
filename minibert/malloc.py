"""glibc's malloc in a long-running server that allocates a batch's activations anew every forward pass.

Two things, both measured with `bench/serve.py` (bench/README.md, "serve.py: malloc"):
- `tune_malloc`: fixed mmap and trim thresholds. Left dynamic, glibc raises its mmap threshold each time a large
  block is freed, after which big tensors come from the heap and fragment it (RSS 471 -> 880 MB in a 5-minute soak).
  Fixed at glibc's default 128 KiB instead, every activation tensor is a fresh mmap whose pages the kernel zeroes on
  first touch: 10 of 32 s of the server's CPU time was sys time (64 clients, bf16, two workers). Blocks up to 4 MiB
  (hidden states of batches up to ~2,700 tokens of MiniLM) now come from the heap, larger ones are mapped, and up to
  256 MiB of freed heap stays for the next batch instead of being returned and faulted in again.
- `HeapTrimmer`: the heap still fragments under batches of ever new shapes; every 30 s `malloc_trim(0)` gives the
  pages of its free chunks back to the system, which bounds the resident memory at the cost of one round of page
  faults per interval.

Elsewhere than glibc (musl, macOS) both do nothing. MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ set in the
environment win over `tune_malloc`.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable

# glibc's mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024
TRIM_INTERVAL_SECONDS = 30.0


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None  # musl has neither


def tune_malloc() -> None:
    """Fix glibc's mmap threshold at 4 MiB and its trim threshold at 256 MiB (unless the environment sets them)."""
    libc = _glibc()
    if libc is None:
        return
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


class HeapTrimmer:
    """`maybe_trim()` after each batch: `malloc_trim(0)` at most once per `interval` seconds, from any thread."""

    def __init__(self, interval: float = TRIM_INTERVAL_SECONDS) -> None:
        libc = _glibc()
        self._trim: Callable[[int], int] | None = libc.malloc_trim if libc is not None else None
        self.interval = interval
        self.trims = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def maybe_trim(self) -> None:
        if self._trim is None:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
            self.trims += 1
        self._trim(0)
