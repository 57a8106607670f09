"""Jobs are selections by the stage each asset declares: every asset is in the jobs of its stage, and
`iot-assets run` goes through them in order, with the day x line shard jobs when the lines are sharded."""

from pathlib import Path

import dagster as dg
import pytest

from iot_assets.defs.automation.jobs import build_jobs
from iot_assets.defs.partitions import Partitions
from iot_assets.defs.stages import STAGE_TAG, STAGES, TRAINING, stage
from iot_assets.materialize import _job_assets, _unbuilt_days, stage_jobs
from iot_assets_tests.support.definitions import definitions_for, settings_for

INGEST = ["collector_files", "epss_feed", "kev_feed", "line_membership", "nvd_cpe_matches", "nvd_feed", "raw_archives"]
DAY_FLOWS = ["clean_flows", "clean_rejects", "collector_flows", "decoded_flows", "device_services", "device_windows",
             "flow_sample"]
LINE_FLOWS = ["line_truth", "line_views"]
TRAINING_ASSETS = ["anomaly_detector", "device_classifier", "drift_reference", "endpoint_signatures"]
DAY_SCORING = ["anomaly_incidents", "anomaly_scores", "daily_report", "device_exposure", "device_inventory",
               "device_vulnerabilities", "feature_drift"]
LINE_SCORING = ["line_inventory"]
REPORTS = ["exposure_report", "line_first_detected", "line_metrics", "model_report", "rebaseline_decisions",
           "vulnerability_report"]


def jobs_and_assets(defs: dg.Definitions) -> dict[str, list[str]]:
    return {job.name: _job_assets(job) for job in defs.get_repository_def().get_all_jobs()
            if not job.name.startswith("__")}


@pytest.fixture(scope="module")
def one_shard() -> dg.Definitions:
    return definitions_for(Path("data"))


def test_every_asset_declares_one_of_the_stages(one_shard):
    graph = one_shard.resolve_asset_graph()
    stages = {key.to_user_string(): graph.get(key).tags.get(STAGE_TAG) for key in graph.get_all_asset_keys()}
    assert {name for name, declared in stages.items() if declared not in STAGES} == set()
    assert sorted(name for name, declared in stages.items() if declared == "training") == TRAINING_ASSETS
    with pytest.raises(ValueError, match="no stage 'scoring': one of ingest, daily_flows"):
        stage("scoring")


def test_one_line_shard_every_asset_is_in_the_jobs_of_its_stage(one_shard):
    defs = one_shard
    assert jobs_and_assets(defs) == {
        "ingest_archives_job": INGEST,
        "daily_flows_job": sorted(DAY_FLOWS + LINE_FLOWS),
        "training_job": TRAINING_ASSETS,
        "daily_scoring_job": sorted(DAY_SCORING + LINE_SCORING),
        "reports_job": REPORTS,
        "daily_job": sorted(DAY_FLOWS + LINE_FLOWS + DAY_SCORING + LINE_SCORING),
        "rebaseline_job": ["anomaly_detector", "drift_reference"],
    }
    # `iot-assets run` goes through the stages in this order, one job each.
    assert [job.name for s in STAGES for job in stage_jobs(defs, s)] == [
        "ingest_archives_job", "daily_flows_job", "training_job", "daily_scoring_job", "reports_job"]
    assert isinstance(defs.resolve_job_def("daily_flows_job").partitions_def, dg.DailyPartitionsDefinition)


def test_sharded_lines_get_day_x_shard_jobs_after_the_day_jobs_of_their_stage():
    defs = definitions_for(Path("data"), IOT_ASSETS_LINE_SHARDS="3")
    assert jobs_and_assets(defs) == {
        "ingest_archives_job": INGEST,
        "daily_flows_job": DAY_FLOWS,
        "daily_flows_by_line_shard_job": LINE_FLOWS,
        "training_job": TRAINING_ASSETS,
        "daily_scoring_job": DAY_SCORING,
        "daily_scoring_by_line_shard_job": LINE_SCORING,
        "reports_job": REPORTS,
        "daily_job": sorted(DAY_FLOWS + DAY_SCORING),
        "daily_by_line_shard_job": sorted(LINE_FLOWS + LINE_SCORING),
        "rebaseline_job": ["anomaly_detector", "drift_reference"],
    }
    assert [job.name for s in STAGES for job in stage_jobs(defs, s)] == [
        "ingest_archives_job", "daily_flows_job", "daily_flows_by_line_shard_job", "training_job",
        "daily_scoring_job", "daily_scoring_by_line_shard_job", "reports_job"]
    shard_job = defs.resolve_job_def("daily_flows_by_line_shard_job")
    assert [d.name for d in shard_job.partitions_def.partitions_defs] == ["day", "shard"]
    assert shard_job.partitions_def.get_partition_keys()[:4] == [
        "2019-06-25|00-of-03", "2019-06-25|01-of-03", "2019-06-25|02-of-03", "2019-06-26|00-of-03"]
    # Each sharded daily job has its schedule beside the day one.
    assert sorted(s.name for s in defs.get_repository_def().schedule_defs) == [
        "daily_by_line_shard_job_schedule", "daily_job_schedule", "weekly_training_schedule"]


def test_an_asset_joins_its_stage_job_by_what_it_declares():
    """A new asset of any group is in its stage's job without a word in jobs.py."""
    parts = Partitions.from_settings(settings_for(Path("data")))

    @dg.asset(group_name="behaviour", tags=stage(TRAINING))
    def a_new_model() -> int:
        return 1

    @dg.asset(group_name="behaviour", tags=stage("reports"), deps=[a_new_model])
    def its_report() -> int:
        return 2

    defs = dg.Definitions(assets=[a_new_model, its_report], jobs=list(build_jobs("data", parts).values()))
    assert _job_assets(defs.resolve_job_def("training_job")) == ["a_new_model"]
    assert _job_assets(defs.resolve_job_def("reports_job")) == ["its_report"]


def test_a_sharded_day_is_built_only_when_every_shard_of_it_is():
    defs = definitions_for(Path("data"), IOT_ASSETS_LINE_SHARDS="2")
    job = defs.resolve_job_def("daily_scoring_by_line_shard_job")
    instance = dg.DagsterInstance.ephemeral()
    days = ["2019-06-25", "2019-06-26"]

    def built(key: str) -> None:
        instance.report_runless_asset_event(dg.AssetMaterialization("line_inventory", partition=key))

    for day in days:
        instance.report_runless_asset_event(dg.AssetMaterialization("device_windows", partition=day))
    assert _unbuilt_days(instance, "daily_scoring", job, days) == set(days)
    built("2019-06-25|00-of-02")
    built("2019-06-25|01-of-02")
    built("2019-06-26|01-of-02")
    assert _unbuilt_days(instance, "daily_scoring", job, days) == {"2019-06-26"}
    built("2019-06-26|00-of-02")
    assert _unbuilt_days(instance, "daily_scoring", job, days) == set()


def test_changed_days_ask_for_the_day_job_then_every_shard_of_the_days():
    defs = definitions_for(Path("data"), IOT_ASSETS_LINE_SHARDS="2")
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "raw_archives", metadata={"changed_days": ["2019-06-26", "2019-06-27", "2019-07-01"]}))
    sensor = defs.get_sensor_def("changed_days_sensor")
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        requests = list(sensor.evaluate_tick(context).run_requests)
    start, end = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
    assert [(r.job_name, r.partition_key, r.tags.get(start), r.tags.get(end)) for r in requests] == [
        ("daily_job", None, "2019-06-26", "2019-06-27"),
        ("daily_by_line_shard_job", None, "2019-06-26|00-of-02", "2019-06-27|01-of-02"),
        ("daily_job", "2019-07-01", None, None),
        ("daily_by_line_shard_job", None, "2019-07-01|00-of-02", "2019-07-01|01-of-02"),
    ]
    # The range is every shard of the two days, in one run.
    job = defs.resolve_job_def("daily_by_line_shard_job")
    assert job.partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(requests[1].tags[start], requests[1].tags[end])) == [
        "2019-06-26|00-of-02", "2019-06-26|01-of-02", "2019-06-27|00-of-02", "2019-06-27|01-of-02"]


def test_every_run_executes_in_one_process_and_every_asset_is_in_its_data_location_pool(tmp_path):
    """Daemon-launched runs: no process per step; every asset, whichever job or backfill runs it, holds its data
    location's pool (a path with a space included: a pool name has none)."""
    from iot_assets.definitions import data_location_pool

    data = tmp_path / "a data folder"
    defs = definitions_for(data)
    for job_name in ("ingest_archives_job", "daily_job", "training_job"):
        assert defs.resolve_job_def(job_name).executor_def.name == "in_process", job_name
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"  # the UI's backfills
    pool = data_location_pool(str(data))
    assert pool == f"iot_assets:{str(data).replace(' ', '%20')}"
    assert {a.node_def.name: a.node_def.pool for a in defs.assets} == {a.node_def.name: pool for a in defs.assets}
    # What the run queue holds a backfill's run by: the pools of its execution plan.
    from dagster._core.execution.api import create_execution_plan
    from dagster._core.op_concurrency_limits_counter import compute_run_op_concurrency_info_for_snapshot
    from dagster._core.snap import snapshot_from_execution_plan

    backfill_job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey(k) for k in ("clean_flows", "clean_rejects", "flow_sample", "device_windows")})
    plan = create_execution_plan(backfill_job)
    concurrency = compute_run_op_concurrency_info_for_snapshot(
        snapshot_from_execution_plan(plan, backfill_job.get_job_snapshot_id()))
    assert concurrency.all_pools == {pool}


def test_the_celery_code_location_keeps_its_executor_and_the_pools(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("celery_definitions", Path(__file__).parents[2] / "deploy" / "celery_definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defs = module.celery_definitions(settings_for(tmp_path))
    assert defs.resolve_job_def("daily_job").executor_def.name == "celery"
    assert {a.node_def.pool for a in defs.assets} == {f"iot_assets:{tmp_path}"}


def test_a_ui_backfill_of_older_days_also_targets_the_lookbacks_of_later_days(tmp_path):
    """What the UI's "Materialize partitions" of the daily assets for 2019-06-25..26 really targets, as Dagster
    computes it (`launchPartitionBackfill` with partition names): the days, and the later days whose assets read
    them through a lookback's partition mapping, transitively: the day after (device_windows and what is scored
    from it), the inventory's week, the line window, the report's two weeks. Those later days must be built before the
    backfill's runs reach them: the queue starts the location's job runs first (QUEUE_PRIORITY) and one run at a
    time (the pools; iot_assets_tests/defs/test_daemon_backfill.py)."""
    import time
    from datetime import date, timedelta

    from dagster._core.execution.asset_backfill import AssetBackfillData

    from iot_assets.core.device_inventory import INVENTORY_DAYS

    defs = definitions_for(tmp_path, IOT_ASSETS_START_DATE="2019-06-25", IOT_ASSETS_END_DATE="2019-07-31")
    keys = defs.resolve_job_def("daily_job").asset_layer.selected_asset_keys
    with dg.DagsterInstance.ephemeral() as instance:
        target = AssetBackfillData.from_asset_partitions(defs.resolve_asset_graph(), ["2019-06-25", "2019-06-26"],
                                                         list(keys), instance, time.time(), False).target_subset
    last_day = {key.to_user_string(): max(subset.get_partition_keys())
                for key, subset in target.partitions_subsets_by_asset_key.items()}
    window = settings_for(tmp_path).line_window_days
    assert last_day["clean_flows"] == "2019-06-26"
    assert last_day["device_windows"] == last_day["anomaly_scores"] == "2019-06-27"
    def after(days: int) -> str:
        return (date(2019, 6, 26) + timedelta(days=days)).isoformat()

    # The week of windows after the day after; the window of line views; two weeks of exposure after the day after.
    assert last_day["device_inventory"] == after(1 + INVENTORY_DAYS - 1)
    assert last_day["line_inventory"] == after(window)
    # At least two weeks after the last day. Further in some runs: device_exposure reads its own day before,
    # and how many of its later days Dagster's walk takes before it stops depends on the order it visits the
    # graph (2019-07-09, -10 and -11 seen in repeated runs of this test).
    assert last_day["daily_report"] >= after(13)
