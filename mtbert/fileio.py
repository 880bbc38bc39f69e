"""Crash-safe file writes: a write either lands whole or leaves the previous file untouched.

A write that fails because of the disk (full, over quota, read-only, not permitted) raises
`DiskWriteError`, a `UserError` naming the file, instead of the writer's own error type.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mtbert.errors import DiskWriteError, disk_write_error

# Writers in Rust or C++ (safetensors, torch.save) raise their own types; safetensors keeps the
# errno in the message, torch does not (then only the free space tells a full disk apart).
_OS_ERROR_IN_MESSAGE = re.compile(r"os error (\d+)")
_NEARLY_FULL_BYTES = 1 << 20


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it onto `path`.

    The rename is atomic on POSIX file systems, so a reader (or a resumed run after a kill) sees the
    old file or the new one, never half of one; the temporary file is removed on any failure.

    Raises:
        DiskWriteError: the disk is full or the folder not writable; `path` is unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as err:
        disk = _disk_error(path, err)
        if disk is None:
            raise
        raise disk from err
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except Exception as err:
        disk = _disk_error(path, err)  # before the unlink: a full disk is still full here
        if disk is None:
            raise
        raise disk from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


@contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Turn a disk or permission failure in the block into a DiskWriteError naming `path`.

    For writers that cannot go through `atomic_write`, such as `tokenizer.save_pretrained(dir)`;
    unlike `atomic_write`, it cannot keep a previous file intact.
    """
    try:
        yield
    except OSError as err:
        disk = disk_write_error(path, err.errno)
        if disk is None:
            raise
        raise disk from err


def _disk_error(path: Path, err: Exception) -> DiskWriteError | None:
    """The DiskWriteError that `err` (raised while writing `path`) stands for, if any."""
    if isinstance(err, OSError):
        return disk_write_error(path, err.errno)
    found = _OS_ERROR_IN_MESSAGE.search(str(err))
    if found:
        return disk_write_error(path, int(found.group(1)))
    return disk_write_error(path, errno.ENOSPC) if _nearly_full(path.parent) else None


def _nearly_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
