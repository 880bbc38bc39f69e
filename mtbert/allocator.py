"""Give memory that training freed back to the operating system.

A training step allocates activations whose sizes change with every length-bucketed batch. glibc's
malloc keeps what they free in its heap for reuse, but the next step's tensors fit the holes badly
and the heap grows: in a quick-profile training (bf16) the process held 3.7 GB between steps
after 94 steps, while a step needs about 1.2 GB plus its batch's activations, and the full
profile's training grew to 5.5 GB (docs/performance.md). Two settings, neither of which changes
the arithmetic:

- `ReleaseFreedMemory`: after a step, once the resident size has grown by `budget_mb` since the
  last release, `malloc_trim(0)` hands the freed heap pages back. Each release costs the page
  faults of bringing them back, so the budget trades time for memory. Measured on the quick
  profile (bf16, 2 threads; no release: 66-69 s, peak 3.9 GB): a release after every step
  82 s / 2.7 GB, budget 512 MB (the default) 75 s / 2.7 GB, 1024 MB 65 s / 3.1 GB.
- `limit_onednn_cache`: oneDNN, which runs bf16 matmuls on the CPU, caches a compiled primitive
  per shape, 1024 by default; bucketed batches have many shapes, and the cache held about 300 MB.

A fixed glibc mmap threshold (large blocks unmapped when freed) was measured too: 2.7 GB, but
124 s, as every activation is faulted in anew.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from mtbert.callbacks import Callback, FitContext

ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def resident_mb() -> float:
    """This process's resident set size in MB (0.0 where /proc is not available)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def malloc_trim() -> bool:
    """glibc's `malloc_trim(0)`: return free heap pages to the OS. False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # musl, macOS: no malloc_trim
        return False
    return bool(trim(0))


def limit_onednn_cache(capacity: int) -> None:
    """Cap oneDNN's primitive cache for this process, unless the user set it. It must run before
    the first bf16 matmul (oneDNN reads the variable when it builds its cache)."""
    os.environ.setdefault(ONEDNN_CACHE_ENV, str(capacity))


class ReleaseFreedMemory(Callback):
    """After each training step, release freed heap memory to the OS once the resident size has
    grown by more than `budget_mb` since the last release (or since the first step)."""

    def __init__(self, budget_mb: int) -> None:
        self.budget_mb = budget_mb
        self.floor: float | None = None
        self.releases = 0

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        rss = resident_mb()
        if self.floor is None:
            self.floor = rss
        elif rss - self.floor > self.budget_mb and malloc_trim():
            self.releases += 1
            self.floor = resident_mb()
