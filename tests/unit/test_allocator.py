"""Releasing freed memory: what training frees goes back to the OS once the process has grown.

The workload runs in its own interpreter (malloc's state is per process). It is the pattern that
grew the training's memory: a large block freed (glibc then serves the next large blocks from its
heap instead of mapping them), then many 1 MB blocks allocated, touched and freed while a 4 MB
block allocated after them keeps the heap from shrinking at its top.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mtbert import allocator
from mtbert.config import ConfigError, load_config
from tests.conftest import REPO_ROOT

WORKLOAD = r"""
import ctypes, json, sys
from mtbert.allocator import ReleaseFreedMemory, resident_mb

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
release = ReleaseFreedMemory(int(sys.argv[1]))
release.on_step(None, {})  # the first step sets the floor
big = libc.malloc(16 << 20); ctypes.memset(big, 1, 16 << 20); libc.free(big)
blocks = []
for _ in range(120):
    p = libc.malloc(1 << 20); ctypes.memset(p, 1, 1 << 20); blocks.append(p)
pin = libc.malloc(4 << 20); ctypes.memset(pin, 1, 4 << 20)
for p in blocks:
    libc.free(p)
freed = resident_mb()
release.on_step(None, {})
print(json.dumps({"kept_mb": freed - release.floor if release.releases == 0 else None,
                  "released_mb": freed - resident_mb(), "releases": release.releases}))
"""

needs_glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                                 reason="glibc's malloc (Linux) only")


def run_workload(budget_mb: int) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKLOAD, str(budget_mb)], capture_output=True,
                         text=True, check=True, cwd=REPO_ROOT)
    return json.loads(out.stdout)


@needs_glibc
def test_freed_memory_stays_until_the_budget_is_passed_then_goes_back() -> None:
    kept = run_workload(1000)  # 120 MB of growth is under the budget: nothing is released
    assert kept["releases"] == 0 and kept["kept_mb"] > 100, kept  # malloc kept the freed blocks
    released = run_workload(50)
    assert released["releases"] == 1 and released["released_mb"] > 100, released


def test_onednn_cache_limit_leaves_a_user_setting_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(allocator.ONEDNN_CACHE_ENV, raising=False)
    allocator.limit_onednn_cache(16)
    assert os.environ[allocator.ONEDNN_CACHE_ENV] == "16"
    monkeypatch.setenv(allocator.ONEDNN_CACHE_ENV, "512")
    allocator.limit_onednn_cache(16)
    assert os.environ[allocator.ONEDNN_CACHE_ENV] == "512"


def test_release_setting_is_checked_and_a_runtime_key() -> None:
    from mtbert.model.trained import RUNTIME_KEYS

    assert "train.release_memory_mb" in RUNTIME_KEYS  # a resumed run may change it; results do not
    with pytest.raises(ConfigError, match="train.release_memory_mb"):
        load_config(REPO_ROOT / "params.yaml", ["train.release_memory_mb=-1"])


def test_recompute_setting_is_checked_and_a_runtime_key() -> None:
    from mtbert.model.trained import RUNTIME_KEYS

    assert "train.recompute_tokens" in RUNTIME_KEYS  # same results: a resumed run may change it
    with pytest.raises(ConfigError, match="train.recompute_tokens"):
        load_config(REPO_ROOT / "params.yaml", ["train.recompute_tokens=-1"])
