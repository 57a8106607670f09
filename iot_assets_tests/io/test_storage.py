"""The storage layer on its own: atomic writes, a full disk, model versions, the run lock."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from upath import UPath

from iot_assets.io import location
from iot_assets.io.models import (
    JsonDocument,
    ModelStore,
    ModelTampered,
    file_hashes,
    model_version,
    parse_pins,
    version_of,
)

ROOT = Path(__file__).resolve().parents[2]


def test_a_full_disk_is_one_line_naming_the_file_and_the_old_file_survives(tmp_path, monkeypatch):
    target = UPath(tmp_path / "reports" / "reconciliation.json")
    location.write_text_atomic(target, "old and whole")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(location.DiskFullError) as caught:
        location.write_text_atomic(target, "new")
    message = str(caught.value)
    assert str(tmp_path / "reports" / "reconciliation.json") in message and "bytes free" in message
    assert "\n" not in message
    monkeypatch.undo()
    assert target.read_text() == "old and whole"
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["reconciliation.json"]  # no temporary left


def test_model_versions_are_content_hashes_and_can_be_served_again(tmp_path):
    store = ModelStore(str(tmp_path))
    first, second = JsonDocument({"devices": {"a": 1}}), JsonDocument({"devices": {"a": 2}})
    v1, _ = store.save("drift_reference", first)
    v2, _ = store.save("drift_reference", second)
    assert v1 == model_version(JsonDocument({"devices": {"a": 1}})) != v2
    assert store.current_or_none("drift_reference") is None  # saving serves nothing: promoting does
    store.promote("drift_reference", v2, "test")
    assert store.current("drift_reference") == v2 and store.versions("drift_reference") == sorted([v1, v2])
    store.use("drift_reference", v1)
    loaded = store.load("drift_reference", store.current("drift_reference"))
    assert loaded == {"devices": {"a": 1}} and loaded.version == v1
    with pytest.raises(FileNotFoundError, match="no version"):
        store.use("drift_reference", "000000000000")
    assert parse_pins("device_classifier=abc, anomaly_detector=def") == {"device_classifier": "abc",
                                                                        "anomaly_detector": "def"}


def test_a_model_directory_that_holds_a_pickle_is_refused(tmp_path):
    store = ModelStore(str(tmp_path))
    version, directory = store.save("drift_reference", JsonDocument({"devices": {}}))
    (Path(str(directory)) / "kind.json").write_text('{"kind": "Unpickler"}')
    with pytest.raises(ModelTampered, match="kind.json changed"):  # the content hash catches it first
        store.load("drift_reference", version)
    # A version saved with the unknown kind (its hashes match): the kind is refused by name.
    files = {"document.json": b"{}", "kind.json": b'{"kind": "Unpickler"}'}
    forged = version_of(file_hashes(files))
    for name, data in files.items():
        (tmp_path / "models" / "drift_reference" / forged).mkdir(parents=True, exist_ok=True)
        (tmp_path / "models" / "drift_reference" / forged / name).write_bytes(data)
    with pytest.raises(ValueError, match="unknown model kind"):
        store.load("drift_reference", forged)


def test_a_second_run_on_the_same_data_location_says_who_holds_it_whatever_its_instance(tmp_path):
    from iot_assets.io.lock import DataLocationLock

    data = tmp_path / "data"
    with DataLocationLock(data, str(data)):
        env = {**os.environ, "IOT_ASSETS_DATA_DIR": str(data), "DAGSTER_HOME": str(tmp_path / "another_home")}
        done = subprocess.run([sys.executable, "-m", "iot_assets.cli", "run"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"{data} is in use by pid {os.getpid()}" in done.stderr
    assert not (data / "raw").exists() or not any((data / "raw").iterdir())


def test_the_lock_dies_with_its_holder(tmp_path):
    """kill -9 of the process that holds the lock frees the location: no stale lock to clear by hand."""
    script = ("import sys, time; from pathlib import Path; from iot_assets.io.lock import DataLocationLock\n"
              "with DataLocationLock(Path(sys.argv[1]), sys.argv[1]):\n    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    from iot_assets.io.lock import DataLocationLock, LocationBusy

    with pytest.raises(LocationBusy, match=f"pid {holder.pid}"):
        DataLocationLock(tmp_path, str(tmp_path)).__enter__()
    holder.kill()
    holder.wait()
    with DataLocationLock(tmp_path, str(tmp_path)):
        pass


def test_a_run_whose_process_died_is_an_orphan_marked_failed_not_waited_for(tmp_path):
    import dagster as dg
    from dagster._core.test_utils import create_run_for_test

    from iot_assets.defs.automation.jobs import LOCATION_TAG, PID_TAG
    from iot_assets.materialize import wait_for_location

    gone = subprocess.Popen(["true"])
    gone.wait()
    instance = dg.DagsterInstance.ephemeral()
    orphan = create_run_for_test(instance, job_name="daily_job", status=dg.DagsterRunStatus.STARTED,
                                 tags={LOCATION_TAG: "/data/a", PID_TAG: str(gone.pid)})
    elsewhere = create_run_for_test(instance, job_name="daily_job", status=dg.DagsterRunStatus.STARTED,
                                    tags={LOCATION_TAG: "/data/b", PID_TAG: str(gone.pid)})
    said = []
    wait_for_location(instance, "/data/a", said.append, poll_seconds=0.01)
    assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(elsewhere.run_id).status == dg.DagsterRunStatus.STARTED  # another location's
    assert said == [f"run {orphan.run_id} of daily_job: its process {gone.pid} is gone; marked failed"]


def test_lazy_days_reads_a_day_once_while_walking_with_the_day_before_and_hands_out_copies(tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    from iot_assets.io.lake import LazyDays, parquet_bytes, read_parquet
    from iot_assets.io.location import base_path

    days = ["2019-06-25", "2019-06-26", "2019-06-27"]
    paths = {}
    for i, day in enumerate(days):
        path = base_path(str(tmp_path)) / f"day={day}" / "part-0.parquet"
        path.parent.mkdir(parents=True)
        path.write_bytes(parquet_bytes(pd.DataFrame({"flows": [i, i + 10]})))
        paths[day] = path
    reads = []

    def read(path):
        reads.append(path.parent.name)
        return read_parquet(path)

    lazy = LazyDays(paths, lambda path, table: table.to_pandas().assign(day=path.parent.name[4:]), read=read)
    for before, day in zip([None, *days], days):  # as device_windows walks: the day before, then the day
        if before:
            assert lazy[before]["flows"].tolist() == [days.index(before), days.index(before) + 10]
        first = lazy[day]
        first.loc[0, "flows"] = -1  # an asset changing its frame in place
        assert lazy[day]["flows"].tolist() == [days.index(day), days.index(day) + 10]
        assert lazy[day]["day"].tolist() == [day, day]
    assert reads == [f"day={d}" for d in days]
    assert pq.read_table(paths[days[0]].path).num_rows == 2
    assert lazy[days[0]]["flows"].tolist() == [0, 10] and reads[-1] == f"day={days[0]}"  # left the two kept: read again


def test_days_built_gathered_state_is_read_after_the_days_are_written_or_the_run_fails(tmp_path):
    """The one asset-inside-IO-manager mechanism: a reordered yield fails loudly instead of checking nothing."""
    import dagster as dg
    import pandas as pd

    from iot_assets.io.lake import DaysBuilt, LakeIOManager

    days = dg.DailyPartitionsDefinition(start_date="2019-06-25", end_date="2019-06-27")

    def make(reorder: bool):
        @dg.asset(partitions_def=days, io_manager_key="lake", check_specs=[dg.AssetCheckSpec("rows", asset="table")],
                  backfill_policy=dg.BackfillPolicy.single_run())
        def table(context: dg.AssetExecutionContext):
            rows = []

            def build(day: str) -> pd.DataFrame:
                rows.append(3)
                return pd.DataFrame({"x": [1, 2, 3]})

            built = DaysBuilt(context.partition_keys, build)
            if reorder:
                built.written()
            yield dg.Output(built)
            built.written()
            yield dg.AssetCheckResult(check_name="rows", passed=sum(rows) == 6, metadata={"rows": sum(rows)})

        return table

    tags = {"dagster/asset_partition_range_start": "2019-06-25", "dagster/asset_partition_range_end": "2019-06-26"}
    ok = dg.materialize([make(False)], resources={"lake": LakeIOManager(str(tmp_path))}, tags=tags)
    (check,) = ok.get_asset_check_evaluations()
    assert check.passed and check.metadata["rows"].value == 6
    reordered = dg.materialize([make(True)], resources={"lake": LakeIOManager(str(tmp_path))}, tags=tags,
                               raise_on_error=False)
    assert not reordered.success
    failure = next(e for e in reordered.all_events if e.is_step_failure)
    assert "read before its days were written" in failure.event_specific_data.error.cause.message


def test_a_day_the_landing_zone_changed_after_it_was_built_is_rebuilt_by_the_next_run():
    """A run killed after ingest (or inside a stage) leaves days whose tables predate the change: they count as unbuilt."""
    import dagster as dg

    from iot_assets.defs.stages import DAILY_FLOWS, DAILY_SCORING
    from iot_assets.materialize import _job_assets, _unbuilt_days
    from iot_assets_tests.support.definitions import definitions_for

    definitions = definitions_for(Path("data"))
    flows_job, scoring_job = (definitions.resolve_job_def(name) for name in ("daily_flows_job", "daily_scoring_job"))
    instance = dg.DagsterInstance.ephemeral()
    days = ["2019-06-25", "2019-06-26"]

    def built(job, day):
        for asset in _job_assets(job):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=day))

    def unbuilt(stage, job):
        return _unbuilt_days(instance, stage, job, days)

    for day in days:
        built(flows_job, day)
        built(scoring_job, day)
    assert unbuilt(DAILY_FLOWS, flows_job) == set()
    assert unbuilt(DAILY_SCORING, scoring_job) == set()
    # The landing zone says 06-26 changed (the run that would rebuild it was killed).
    instance.report_runless_asset_event(dg.AssetMaterialization("raw_archives", metadata={"changed_days": ["2019-06-26"]}))
    assert unbuilt(DAILY_FLOWS, flows_job) == {"2019-06-26"}
    # Its flows rebuilt, but the run killed before scoring: the scores are older than the windows.
    built(flows_job, "2019-06-26")
    assert unbuilt(DAILY_FLOWS, flows_job) == set()
    assert unbuilt(DAILY_SCORING, scoring_job) == {"2019-06-26"}
    built(scoring_job, "2019-06-26")
    assert unbuilt(DAILY_SCORING, scoring_job) == set()
