"""Sensors, schedules and drift checks, evaluated directly; a changed archive rebuilds exactly its days."""

import shutil
from datetime import date, datetime, timezone

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from iot_assets.config import Settings
from iot_assets.core import drift
from iot_assets.core.features import FEATURES
from iot_assets.defs.automation.sensors import day_ranges
from iot_assets.defs.ingest.assets import changed_days
from iot_assets.defs.partitions import Partitions
from iot_assets.synthetic import sample
from iot_assets_tests.support.definitions import definitions_for, resources_for


def test_archive_sensor_notices_new_and_changed_archives(tmp_path):
    resources = {"archives": resources_for(tmp_path)["archives"]}
    archive_sensor = definitions_for(tmp_path).get_sensor_def("archive_sensor")
    instance = dg.DagsterInstance.ephemeral()  # where the sensor reads what the last ingest saw
    (tmp_path / "raw").mkdir()
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        assert isinstance(archive_sensor(context), dg.SkipReason)
    (tmp_path / "raw" / "nature_remo.tar.gz").write_bytes(b"first")
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        first = archive_sensor(context)
        assert isinstance(first, dg.RunRequest)
        cursor = context.cursor
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        assert isinstance(archive_sensor(context), dg.SkipReason)
    (tmp_path / "raw" / "nature_remo.tar.gz").write_bytes(b"changed content")
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        second = archive_sensor(context)
        assert isinstance(second, dg.RunRequest) and second.run_key != first.run_key


def test_archive_sensor_launches_nothing_for_a_landing_zone_the_last_ingest_saw(tmp_path):
    """A daemon started after `iot-assets run` (no cursor yet) on an unchanged landing zone launches no ingest."""
    from iot_assets.defs.automation.sensors import LANDING_ZONE_FINGERPRINT, landing_zone_fingerprint

    resources = {"archives": resources_for(tmp_path)["archives"]}
    archive_sensor = definitions_for(tmp_path).get_sensor_def("archive_sensor")
    instance = dg.DagsterInstance.ephemeral()
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "nature_remo.tar.gz").write_bytes(b"ingested by iot-assets run")
    ingested = landing_zone_fingerprint(resources["archives"])
    assert ingested
    instance.report_runless_asset_event(dg.AssetMaterialization("raw_archives",
                                                                metadata={LANDING_ZONE_FINGERPRINT: ingested}))
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        skipped = archive_sensor(context)
        assert isinstance(skipped, dg.SkipReason) and "since the last ingest" in skipped.skip_message
        assert context.cursor == ingested
    (tmp_path / "raw" / "qrio_hub.tar.gz").write_bytes(b"new since")
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=ingested) as context:
        assert isinstance(archive_sensor(context), dg.RunRequest)


def test_changed_days_cover_what_an_archive_covered_and_covers():
    before = {"a": {"sha256": "1", "days": ["d1", "d2", "d3"]}, "b": {"sha256": "2", "days": ["d2"]},
              "c": {"sha256": "3", "days": ["d5"]}}
    after = {"a": {"sha256": "9", "days": ["d2"]}, "b": {"sha256": "2", "days": ["d2"]},
             "n": {"sha256": "4", "days": ["d7"]}}
    # a shrank (d1, d3 must be emptied of it), c is gone (d5), n is new (d7); b did not change.
    assert changed_days(before, after) == {"d1", "d2", "d3", "d5", "d7"}


def test_day_ranges_group_consecutive_days():
    parts = Partitions.from_settings(Settings.from_env({"IOT_ASSETS_END_DATE": "2019-07-08"}))
    assert day_ranges(["2019-06-27", "2019-06-25", "2019-06-26", "2019-07-01"], parts) == [
        ("2019-06-25", "2019-06-27"), ("2019-07-01", "2019-07-01")]


def test_schedule_runs_the_day_that_ended():
    from iot_assets.definitions import defs

    schedule = defs().get_schedule_def("daily_job_schedule")
    with dg.build_schedule_context(scheduled_execution_time=datetime(2019, 7, 2, 0, 30, tzinfo=timezone.utc)) as context:
        requests = list(schedule.evaluate_tick(context).run_requests)
    assert [r.partition_key for r in requests] == ["2019-07-01"]


def test_changed_days_sensor_follows_archives_and_collector_files(tmp_path):
    defs = definitions_for(tmp_path, IOT_ASSETS_END_DATE="2019-07-08")
    sensor = defs.get_sensor_def("changed_days_sensor")
    instance = dg.DagsterInstance.ephemeral()

    def landed(asset: str, days: list[str]) -> None:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset, metadata={"changed_days": dg.MetadataValue.json(days)}))

    def tick(cursor: str | None) -> tuple[list[tuple], str]:
        with dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor) as context:
            result = sensor.evaluate_tick(context)
        return sorted((r.partition_key, r.tags.get("dagster/asset_partition_range_start"),
                       r.tags.get("dagster/asset_partition_range_end")) for r in result.run_requests), result.cursor

    landed("raw_archives", ["2019-06-25"])
    landed("collector_files", ["2019-06-26", "2019-06-28"])
    # 2019-06-28's report was rebuilt after the collector file changed it (by `iot-assets run`): not asked again.
    instance.report_runless_asset_event(dg.AssetMaterialization("daily_report", partition="2019-06-28"))
    requests, cursor = tick(None)
    assert requests == [(None, "2019-06-25", "2019-06-26")]
    assert tick(cursor)[0] == []  # nothing new since
    landed("collector_files", ["2019-07-01"])  # a collector file alone changes a day
    requests, cursor = tick(cursor)
    assert requests == [("2019-07-01", None, None)]
    assert tick(cursor)[0] == []


def _materialized_days(instance: dg.DagsterInstance, asset: str, after: float) -> list[str]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_timestamp=after), limit=1000).records
    return sorted(r.partition_key for r in records)


@pytest.mark.slow
def test_a_changed_archive_rebuilds_every_daily_asset_of_exactly_its_days(tmp_path):
    from iot_assets.materialize import QUIET

    data = tmp_path / "data"
    devices = ["nature_remo", "xiaomi_mijia_led", "qrio_hub"]
    sample.generate(data / "raw", date(2019, 6, 25), 5, scale=0.02, seed=1, devices=devices)
    resources = resources_for(data, IOT_ASSETS_END_DATE="2019-06-29")
    defs = definitions_for(data, IOT_ASSETS_END_DATE="2019-06-29")
    instance = dg.DagsterInstance.ephemeral()

    def run(job_name: str, **kwargs):
        result = defs.resolve_job_def(job_name).execute_in_process(instance=instance, run_config=QUIET, **kwargs)
        assert result.success
        return result

    run("ingest_archives_job")
    tags = {"dagster/asset_partition_range_start": "2019-06-25", "dagster/asset_partition_range_end": "2019-06-29"}
    run("daily_flows_job", tags=tags)
    run("training_job")
    run("daily_scoring_job", tags=tags)

    # The Xiaomi archive is replaced by one that covers 2019-06-28 .. 29 only.
    replaced = tmp_path / "replacement"
    sample.generate(replaced, date(2019, 6, 28), 2, scale=0.02, seed=2, devices=["xiaomi_mijia_led"])
    shutil.copy(replaced / "xiaomi_mijia_led.tar.gz", data / "raw" / "xiaomi_mijia_led.tar.gz")
    before = instance.get_latest_materialization_event(dg.AssetKey("daily_report")).timestamp

    archive_sensor = defs.get_sensor_def("archive_sensor")
    with dg.build_sensor_context(instance=instance, resources={"archives": resources["archives"]}) as context:
        assert isinstance(archive_sensor(context), dg.RunRequest)
    run("ingest_archives_job")
    sensor = defs.get_sensor_def("changed_days_sensor")
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        requests = list(sensor.evaluate_tick(context).run_requests)
    assert len(requests) == 1 and requests[0].job_name in (None, "daily_job")
    for request in requests:
        daily_job_def = defs.resolve_job_def("daily_job")
        assert daily_job_def.execute_in_process(instance=instance, run_config=QUIET, tags=request.tags,
                                                partition_key=request.partition_key).success

    # A second tick finds the days rebuilt and asks for nothing.
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        assert list(sensor.evaluate_tick(context).run_requests) == []

    # Every day the old archive covered (25..29) is rebuilt, through the daily report, and no other.
    for asset in ("decoded_flows", "clean_flows", "device_windows", "device_inventory", "anomaly_scores",
                  "feature_drift", "daily_report"):
        assert _materialized_days(instance, asset, before) == [f"2019-06-{d}" for d in range(25, 30)], asset
    clean = pd.read_parquet(data / "lake" / "clean_flows" / "day=2019-06-26" / "part-0.parquet")
    assert "Xiaomi Mijia LED" not in set(clean["device_name"]) and len(clean) > 0
    clean = pd.read_parquet(data / "lake" / "clean_flows" / "day=2019-06-28" / "part-0.parquet")
    assert "Xiaomi Mijia LED" in set(clean["device_name"])


def _windows(days: int, services_shift: float = 0.0, start: str = "2019-07-01", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * 24
    frame = pd.DataFrame(rng.normal(0.5, 0.05, size=(n, len(FEATURES))).clip(0, 1), columns=FEATURES)
    frame["w_log_own_flows"] = 3.0
    frame["w_log_flows"] = 4.0
    frame["w_scope_internet_share"] = 0.5
    service_columns = [c for c in FEATURES if c.startswith(("w_svc_", "w_port_b"))]
    frame[service_columns] = 0.0
    frame["w_svc_https_share"] = 1.0 - services_shift
    frame["w_svc_https_alt_share"] = services_shift
    frame["device_key"] = "60:01:94:54:6b:e8"
    frame["device_name"] = "Nature Remo"
    frame["window_start"] = pd.date_range(start, periods=n, freq="h", tz="UTC")
    return frame


def test_drift_flags_a_changed_service_mix_and_not_a_normal_day():
    reference = drift.build_reference(_windows(10))
    normal = drift.summarize(drift.day_drift(_windows(1, start="2019-07-11", seed=1), reference))
    changed = drift.summarize(drift.day_drift(_windows(1, services_shift=0.9, start="2019-07-11", seed=1), reference))
    assert normal.loc[0, "level"] == "none"
    assert changed.loc[0, "level"] == "major" and "mix:services" in changed.loc[0, "top_drifted"]


def test_js_distance_bounds():
    p = np.array([0.5, 0.5, 0.0])
    assert drift.js_distance(p, p) < 1e-3
    assert drift.js_distance(np.array([1.0, 0, 0]), np.array([0, 0, 1.0])) > 0.99


def test_archive_sensor_asks_for_no_second_scan_while_one_is_in_flight(tmp_path):
    """A scan compares the whole landing zone: while one is queued or running, a change waits for the next tick."""
    from dagster._core.test_utils import create_run_for_test

    resources = {"archives": resources_for(tmp_path)["archives"]}
    archive_sensor = definitions_for(tmp_path).get_sensor_def("archive_sensor")
    instance = dg.DagsterInstance.ephemeral()
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "nature_remo.tar.gz").write_bytes(b"landed while a scan runs")
    running = create_run_for_test(instance, job_name="ingest_archives_job", status=dg.DagsterRunStatus.STARTED)
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        skipped = archive_sensor(context)
        assert isinstance(skipped, dg.SkipReason) and "queued or running" in skipped.skip_message
        assert context.cursor is None  # the change is still to be asked for
    instance.delete_run(running.run_id)
    create_run_for_test(instance, job_name="ingest_archives_job", status=dg.DagsterRunStatus.SUCCESS)
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        assert isinstance(archive_sensor(context), dg.RunRequest)


def test_changed_days_sensor_redoes_the_days_whose_daily_run_gave_up(tmp_path):
    """A daily run whose retries were used up (its worker killed each time) leaves its days unbuilt: the sensor
    asks for them again, once per failed run, not while a daily run is queued or will be retried, and no more
    after REDO_LIMIT failures; a day built after its landing is not asked for."""
    from dagster._core.test_utils import create_run_for_test

    from iot_assets.defs.automation.sensors import REDO_LIMIT
    from iot_assets.materialize import _job_assets

    defs = definitions_for(tmp_path, IOT_ASSETS_END_DATE="2019-07-08")
    sensor = defs.get_sensor_def("changed_days_sensor")
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor: str | None) -> tuple[list[tuple], str]:
        with dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor) as context:
            result = sensor.evaluate_tick(context)
        return sorted((r.run_key, r.partition_key, r.tags.get("dagster/asset_partition_range_start"),
                       r.tags.get("dagster/asset_partition_range_end")) for r in result.run_requests), result.cursor

    def daily_run(status: dg.DagsterRunStatus, will_retry: str | None = "false"):
        tags = {"dagster/asset_partition_range_start": "2019-06-25", "dagster/asset_partition_range_end": "2019-06-27"}
        if status == dg.DagsterRunStatus.FAILURE and will_retry is not None:
            tags["dagster/will_retry"] = will_retry
        return create_run_for_test(instance, job_name="daily_job", status=status, tags=tags)

    instance.report_runless_asset_event(dg.AssetMaterialization(
        "raw_archives", metadata={"changed_days": dg.MetadataValue.json(["2019-06-25", "2019-06-26", "2019-06-27"])}))
    requests, cursor = tick(None)
    assert [r[2:] for r in requests] == [("2019-06-25", "2019-06-27")]
    assert tick(cursor)[0] == []  # asked once; no daily run has ended yet
    # 2019-06-26 is built after its landing (every daily asset), by another run.
    for asset in _job_assets(defs.resolve_job_def("daily_job")):
        instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition="2019-06-26"))

    retried = daily_run(dg.DagsterRunStatus.FAILURE, will_retry="true")
    assert tick(cursor)[0] == []  # its retry is coming
    first_failure = daily_run(dg.DagsterRunStatus.FAILURE)
    requests, _ = tick(cursor)
    assert requests == [(f"redo-{first_failure.run_id[:8]}-2019-06-25-2019-06-25", "2019-06-25", None, None),
                        (f"redo-{first_failure.run_id[:8]}-2019-06-27-2019-06-27", "2019-06-27", None, None)]
    assert tick(cursor)[0] == requests  # the same keys: the daemon launches them once
    running = daily_run(dg.DagsterRunStatus.STARTED)
    assert tick(cursor)[0] == []
    instance.delete_run(running.run_id)
    instance.delete_run(retried.run_id)
    for _ in range(REDO_LIMIT - 2):  # the first failure was above
        last_failure = daily_run(dg.DagsterRunStatus.FAILURE)
        requests, _ = tick(cursor)
        assert {r[0].split("-")[1] for r in requests} == {last_failure.run_id[:8]}
    daily_run(dg.DagsterRunStatus.FAILURE)  # the REDO_LIMIT-th failure since the landing
    assert tick(cursor)[0] == []


def test_changed_days_sensor_redoes_the_days_of_a_backfill_run_that_failed_for_good(tmp_path):
    """A backfill never runs a failed run again: the sensor asks once for its days as one daily run, after any
    daily run in flight; not for a run a retry follows, nor for a failed run outside a backfill."""
    from dagster._core.test_utils import create_run_for_test

    defs = definitions_for(tmp_path, IOT_ASSETS_END_DATE="2019-07-08")
    sensor = defs.get_sensor_def("changed_days_sensor")
    instance = dg.DagsterInstance.ephemeral()

    def tick() -> list[tuple]:
        with dg.build_sensor_context(instance=instance, definitions=defs) as context:
            result = sensor.evaluate_tick(context)
        return sorted((r.run_key, r.job_name, r.tags.get("dagster/asset_partition_range_start"),
                       r.tags.get("dagster/asset_partition_range_end")) for r in result.run_requests)

    def asset_run(will_retry: str, **tags):
        return create_run_for_test(instance, job_name="__ASSET_JOB", status=dg.DagsterRunStatus.FAILURE,
                                   tags={"dagster/will_retry": will_retry, **tags})

    reach = {"dagster/asset_partition_range_start": "2019-06-25", "dagster/asset_partition_range_end": "2019-06-27"}
    asset_run("true", **{"dagster/backfill": "abcdefgh"}, **reach)  # its retry is coming
    asset_run("false", **reach)  # a failed materialization outside any backfill: the analyst's to rerun
    assert tick() == []
    failed = asset_run("false", **{"dagster/backfill": "abcdefgh"}, **reach)
    running = create_run_for_test(instance, job_name="daily_job", status=dg.DagsterRunStatus.STARTED,
                                  tags={"dagster/partition": "2019-06-27"})
    assert tick() == []  # the day it failed on may be the one being built
    instance.delete_run(running.run_id)
    assert tick() == [(f"redo-backfill-{failed.run_id[:8]}-2019-06-25-2019-06-27", "daily_job", "2019-06-25",
                       "2019-06-27")]
