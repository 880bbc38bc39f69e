"""A write that the disk refuses is a DiskWriteError naming the file; the previous file survives.

The disk is really full (a 256 KiB tmpfs in a private mount namespace, where `unshare` and
`mount` are allowed) or the file size is really limited (`RLIMIT_FSIZE`, as `ulimit -f`), each
in a child process so that nothing here is affected.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtbert.errors import DiskWriteError
from mtbert.fileio import atomic_write, disk_errors
from tests.conftest import REPO_ROOT

# Writes the previous file, then tries bigger writes through every writer the project uses.
WRITERS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from mtbert.errors import DiskWriteError
    from mtbert.fileio import atomic_write, atomic_write_text

    folder = Path(sys.argv[1])
    target = folder / "out" / "model.bin"
    atomic_write_text(target, "previous")
    {limit}
    big = {{"w": torch.zeros(256 * 1024)}}  # 1 MiB
    writers = {{
        "text": lambda tmp: tmp.write_text("x" * (1 << 20)),
        "torch": lambda tmp: torch.save(big, tmp),
        "safetensors": lambda tmp: save_file(big, str(tmp)),
    }}
    results = {{}}
    for name, write in writers.items():
        try:
            atomic_write(target, write)
            results[name] = "written"
        except Exception as err:  # the test checks which type each writer's failure became
            results[name] = [type(err).__name__, str(err), isinstance(err, DiskWriteError)]
    leftovers = sorted(p.name for p in target.parent.iterdir())
    print(json.dumps({{"results": results, "content": target.read_text(), "files": leftovers}}))
""")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def _check(report: dict, target: Path, reason: str, writers: tuple[str, ...]) -> None:
    for name in writers:
        kind, message, is_disk_error = report["results"][name]
        assert (kind, is_disk_error) == ("DiskWriteError", True), (name, message)
        assert message.startswith(f"{target}: {reason} while writing ("), (name, message)
        assert message.endswith("the previous file is unchanged)"), (name, message)
    assert report["content"] == "previous"
    assert report["files"] == ["model.bin"]  # no temporary file left behind


def test_full_disk_keeps_the_previous_file(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount")
    script = tmp_path / "writers.py"
    script.write_text(WRITERS.format(limit=""))
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    shell = (f"mount -t tmpfs -o size=256k tmpfs {mount_point} || exit 77; "
             f"exec {sys.executable} {script} {mount_point}")
    proc = _run(["unshare", "--mount", "--map-root-user", "sh", "-c", shell])
    if proc.returncode == 77 or "unshare failed" in proc.stderr or "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    target = mount_point / "out" / "model.bin"
    _check(json.loads(proc.stdout), target, "disk full", ("text", "torch", "safetensors"))


def test_file_size_limit_keeps_the_previous_file(tmp_path: Path) -> None:
    limit = textwrap.dedent("""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    """)
    script = tmp_path / "writers.py"
    script.write_text(WRITERS.format(limit=limit))
    proc = _run([sys.executable, str(script), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # Python's own writes carry the errno; safetensors keeps it in its message. torch.save's C++
    # writer loses it, and the disk is not full, so that one stays torch's own error.
    _check(report, tmp_path / "out" / "model.bin", "file too large for this file system or size "
           "limit", ("text", "safetensors"))
    assert report["results"]["torch"][0] == "RuntimeError"


def test_disk_errors_in_process(tmp_path: Path) -> None:
    def full(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "metrics.json"
    target.write_text("previous")
    with pytest.raises(DiskWriteError, match=r"metrics\.json: disk full while writing"):
        atomic_write(target, full)
    assert target.read_text() == "previous" and sorted(tmp_path.iterdir()) == [target]
    with pytest.raises(DiskWriteError, match=r"tok: permission denied while writing"):
        with disk_errors(tmp_path / "tok"):
            raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(FileNotFoundError) as caught, disk_errors(tmp_path / "tok"):
        raise FileNotFoundError(errno.ENOENT, "gone")  # not a disk problem: unchanged
    assert not isinstance(caught.value, DiskWriteError)
