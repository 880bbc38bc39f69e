"""Errors caused by the user's input, reported as one line that names the file, line and field.

Every error that bad input can cause (a data file, params.yaml or an override, a path, a
checkpoint, a full disk) is a `UserError`. The CLI catches this one base class and prints
`mtbert <command>: <str(err)>` with exit status 2 and no traceback; anything else is a bug and
keeps its traceback. `str(err)` is a single line:

    <path>[:<line>]: <field>: <reason> (<fix>)

where each part except `reason` appears only when known. The concrete classes also derive from
the builtin exception they replaced (`ValueError`, `FileNotFoundError`, `OSError`, ...), so code
that caught those keeps working.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")

# errno values of a write that fails because of the disk or its permissions, not of a bug.
WRITE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or size limit",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def one_line(text: str) -> str:
    """`text` with every line break (and the blanks around it) turned into one space."""
    return _LINE_BREAKS.sub(" ", text.strip())


class UserError(Exception):
    """An error in the user's input (data, params, paths, checkpoints, disk), not a bug.

    Attributes:
        reason: what is wrong, e.g. ``"must be >= 1, got 0"``.
        path: the file or directory at fault, as given; None when no file is involved.
        line: 1-based line in `path`, where a line is meaningful.
        field: the key, column or parameter at fault (``train.lr``, ``sentiment``).
        fix: a short hint on what to do, shown in parentheses at the end.
    """

    field_format = "{}"  # how `field` is shown; subclasses may quote it ("field '{}'")

    def __init__(self, reason: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.fix = fix

    def __str__(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path if self.line is None else f"{self.path}:{self.line}")
        if self.field:
            parts.append(self.field_format.format(self.field))
        parts.append(self.reason)
        text = ": ".join(parts)
        return one_line(f"{text} ({self.fix})" if self.fix else text)

    def locate(self, path: str | Path, line: int | None = None) -> UserError:
        """Fill in the file (and line) where the raiser did not know it; returns `self`.

        For code that learns the file only further up, e.g. a weights check that sees tensors.
        """
        if self.path is None:
            self.path = str(path)
            self.line = line if self.line is None else self.line
        return self


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory that the input names does not exist."""


class DiskWriteError(UserError, OSError):
    """Writing a file failed because of the disk: full, over quota, read-only or not permitted.

    Attributes:
        errno: the errno of the failed write.
    """

    def __init__(self, reason: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None, code: int | None = None) -> None:
        super().__init__(reason, path=path, line=line, field=field, fix=fix)
        self.errno = code

    def __reduce__(self) -> tuple:
        return (_rebuild_disk_write_error, (self.reason, self.path, self.fix, self.errno))


def _rebuild_disk_write_error(reason: str, path: str | None, fix: str | None,
                              code: int | None) -> DiskWriteError:
    return DiskWriteError(reason, path=path, fix=fix, code=code)


def disk_write_error(path: str | Path, code: int | None) -> DiskWriteError | None:
    """The DiskWriteError for a write of `path` that failed with errno `code`, or None if that
    errno is not a disk or permission problem.

    Example: ENOSPC while writing `artifacts/model/model.safetensors` gives
    ``artifacts/model/model.safetensors: disk full while writing (free some space and run again;
    the previous file is unchanged)``.
    """
    what = WRITE_ERRNOS.get(code) if code is not None else None
    if what is None:
        return None
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space and run again"
    elif code == errno.EFBIG:
        fix = "raise the file size limit (ulimit -f) or write to another file system"
    else:
        fix = "check the permissions of the folder"
    fix += "; the previous file is unchanged"
    return DiskWriteError(f"{what} while writing", path=path, fix=fix, code=code)


class Interrupted(UserError):
    """A run stopped on request (SIGTERM, SIGINT) after saving what it needs to resume.

    `exit_code` is 128 + the signal number, as a shell reports a process ended by that signal.
    """

    def __init__(self, reason: str, *, signum: int, path: str | Path | None = None,
                 fix: str | None = None) -> None:
        super().__init__(reason, path=path, fix=fix)
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self) -> tuple:
        return (_rebuild_interrupted, (self.reason, self.signum, self.path, self.fix))


def _rebuild_interrupted(reason: str, signum: int, path: str | None, fix: str | None) -> Interrupted:
    return Interrupted(reason, signum=signum, path=path, fix=fix)
