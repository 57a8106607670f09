"""Automation in Dagster's terms: sensors for what depends on the data, schedules for cadences,
declarative conditions for what follows from other assets."""

from __future__ import annotations

import json

import dagster as dg

from iot_assets.defs.automation.jobs import build_jobs, line_shard_job_name
from iot_assets.defs.loading import Deployment, current_deployment
from iot_assets.defs.partitions import Partitions, day_range
from iot_assets.io.collectors import CollectorStore
from iot_assets.io.staging import ArchiveStore

LANDING_ZONE_FINGERPRINT = "landing_zone_fingerprint"  # raw_archives' metadata: the landing zone it ingested
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def day_ranges(days: list[str], parts: Partitions) -> list[tuple[str, str]]:
    """Consecutive runs of partition keys, as (first, last) pairs of at most `parts.days_per_run` days."""
    keys, most = parts.daily.get_partition_keys(), parts.days_per_run
    index = {key: i for i, key in enumerate(keys)}
    ranges: list[tuple[str, str]] = []
    for day in sorted(d for d in days if d in index):
        if ranges and index[day] == index[ranges[-1][1]] + 1 and index[day] - index[ranges[-1][0]] < most:
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def landing_zone_fingerprint(archives: ArchiveStore) -> str:
    """Names, sizes and modification times of the archives and collector files ("" for an empty landing zone)."""
    collector_files = CollectorStore(archives.base_url).fingerprint()
    return f"{archives.fingerprint()}+{collector_files}" if collector_files else archives.fingerprint()


def last_ingested_fingerprint(instance: dg.DagsterInstance) -> str:
    """The landing zone the latest raw_archives materialization ingested, whoever ran it ("" if none says)."""
    event = instance.get_latest_materialization_event(dg.AssetKey("raw_archives"))
    materialization = event.asset_materialization if event else None
    value = materialization.metadata.get(LANDING_ZONE_FINGERPRINT) if materialization else None
    return str(value.value) if value is not None else ""


def range_tags(first: str, last: str) -> dict[str, str]:
    """A range of days as one run (the assets' single-run backfill policy); one day as a partition."""
    return {RANGE_START: first, RANGE_END: last}


def _rebuilt_since(instance: dg.DagsterInstance, day: str, timestamp: float) -> bool:
    """Whether the day's report was rebuilt after the landing zone changed (by `iot-assets run`, say)."""
    return bool(instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("daily_report"), asset_partitions=[day], after_timestamp=timestamp),
        limit=1).records)


# The assets that read the landing zone: each says in its `changed_days` metadata which days it changed.
LANDING_ASSETS = ("raw_archives", "collector_files")
_EVENTS_PER_TICK = 100


def stale_days(instance: dg.DagsterInstance, cursor: dict[str, int]) -> tuple[set[str], dict[str, int]]:
    """The days that archives or collector files changed since `cursor` (the last storage id seen per
    landing asset) and that no daily report has been rebuilt for since; the cursor moved past them."""
    stale, cursor = set(), dict(cursor)
    for asset in LANDING_ASSETS:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=cursor.get(asset)),
            limit=_EVENTS_PER_TICK, ascending=True).records
        for record in records:
            materialization = record.asset_materialization
            changed = materialization.metadata.get("changed_days") if materialization else None
            stale |= {day for day in (changed.value if changed else [])
                      if not _rebuilt_since(instance, day, record.timestamp)}
            cursor[asset] = record.storage_id
    return stale, cursor


BACKFILL_JOB = "__ASSET_JOB"  # the job of an asset backfill's runs
QUEUED_OR_IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                         dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
# How many runs of a day may fail after the landing zone last changed it before the sensor stops
# asking again: each had its automatic retries; a day that fails on its data fails alone, and
# `iot-assets run` says why.
REDO_LIMIT = 3


def runs_in_flight(instance: dg.DagsterInstance, job_names: list[str]) -> list[dg.DagsterRun]:
    """The runs of these jobs queued or in progress."""
    return [r for name in job_names
            for r in instance.get_runs(dg.RunsFilter(job_name=name, statuses=QUEUED_OR_IN_PROGRESS))]


def days_of_run(run: dg.DagsterRun, partitions_def: dg.PartitionsDefinition) -> set[str]:
    """The days a run of a daily job builds: its partition, or every day of its range."""
    from iot_assets.defs.partitions import day_of_key

    if run.tags.get("dagster/partition"):
        return {day_of_key(run.tags["dagster/partition"])}
    first, last = run.tags.get(RANGE_START), run.tags.get(RANGE_END)
    if not first or not last:
        return set()
    days = partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(first, last))
    return {day_of_key(key) for key in days}


def days_to_redo(instance: dg.DagsterInstance, daily_jobs: list[dg.JobDefinition], asked: set[str]) -> tuple[set[str], dict[str, str]]:
    """Landed days not built since the landing zone last changed them (iot_assets.materialize._unbuilt_days)
    whose newest daily run failed for good (no automatic retry coming) fewer than REDO_LIMIT times, while
    no daily run is queued or in progress; and for each such day, the id of that failed run."""
    from iot_assets.defs.stages import DAILY_FLOWS
    from iot_assets.materialize import _changed_at, _unbuilt_days  # materialize imports this module

    names = [job.name for job in daily_jobs]
    if runs_in_flight(instance, names):
        return set(), {}
    changed_at = _changed_at(instance)
    landed = [d for d in daily_jobs[0].partitions_def.get_partition_keys() if d in changed_at and d not in asked]
    unbuilt = set()
    for job in daily_jobs:
        unbuilt |= _unbuilt_days(instance, DAILY_FLOWS, job, landed)
    if not unbuilt:
        return set(), {}
    since = _utc(min(changed_at[day] for day in unbuilt))
    newest: dict[str, tuple[float, dg.DagsterRun]] = {}  # each day's newest run since its last change
    gave_up: dict[str, int] = {}  # each day's runs since its last change that failed with no retry to come
    for job in daily_jobs:
        for record in instance.get_run_records(dg.RunsFilter(job_name=job.name, created_after=since)):
            run, created = record.dagster_run, record.create_timestamp.timestamp()
            for day in days_of_run(run, job.partitions_def) & unbuilt:
                if created < changed_at[day]:
                    continue
                if day not in newest or created > newest[day][0]:
                    newest[day] = (created, run)
                gave_up[day] = gave_up.get(day, 0) + _gave_up(run)
    redo = {day for day, (_, run) in newest.items() if _gave_up(run) and gave_up[day] < REDO_LIMIT}
    return redo, {day: newest[day][1].run_id for day in redo}


def backfill_runs_to_redo(instance: dg.DagsterInstance) -> list[tuple[str, str, str]]:
    """(run id, first day, last day) of each run of an asset backfill (the UI's "Materialize partitions")
    that failed with no retry to come. A backfill never runs a failed run again; its runs reach later days
    through the lookbacks, and one that reached a day in the minute between that day's landing scan and
    its daily run failed on it, leaving the backfill's days as they were."""
    from iot_assets.defs.partitions import day_of_key

    found = []
    for run in instance.get_runs(dg.RunsFilter(job_name=BACKFILL_JOB, statuses=[dg.DagsterRunStatus.FAILURE])):
        first = run.tags.get("dagster/partition") or run.tags.get(RANGE_START)
        last = run.tags.get("dagster/partition") or run.tags.get(RANGE_END)
        if "dagster/backfill" in run.tags and _gave_up(run) and first and last:
            found.append((run.run_id, day_of_key(first), day_of_key(last)))
    return found


def _gave_up(run: dg.DagsterRun) -> bool:
    """A failed run no automatic retry follows (the instance tags each failure with its decision)."""
    return run.status == dg.DagsterRunStatus.FAILURE and run.tags.get("dagster/will_retry") == "false"


def _utc(timestamp: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, tz=UTC)


# A scheduled or drift-triggered retrain challenges the served models on a sliding window of
# recent days and replaces them only when it does better on the days after that window
# (iot_assets/champion.py). `training_job` from the UI without config trains on the time split.
CHALLENGE = {"challenge": True}
CHALLENGE_RUN_CONFIG = {"ops": {name: {"config": CHALLENGE} for name in ("device_classifier", "anomaly_detector")}}
# The share of a day's devices whose drift check is not `none` that calls for a retrain.
RETRAIN_DRIFTED_SHARE = 0.5


def days_calling_for_retraining(drifted_devices_per_day: dict[str, dict]) -> list[str]:
    """The days on which at least RETRAIN_DRIFTED_SHARE of the devices seen drifted."""
    return sorted(day for day, counts in drifted_devices_per_day.items()
                  if counts["devices"] and counts["drifted"] >= RETRAIN_DRIFTED_SHARE * counts["devices"])


# The model report and the re-baselining decisions follow the models and the scored days.
AFTER_ITS_INPUTS = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.in_progress()
    & ~dg.AutomationCondition.any_deps_in_progress()
)

automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.assets("model_report", "rebaseline_decisions", "vulnerability_report"),
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=60,
)


def build(deployment: Deployment) -> dg.Definitions:
    """The jobs, sensors and schedules of the deployment resolved at load."""
    parts = deployment.partitions
    jobs = build_jobs(deployment.settings.data_dir, parts)
    # The daily jobs, in the order a day is built: the day x line shard assets after the day's flows.
    daily_jobs = [jobs[name] for name in ("daily_job", line_shard_job_name("daily_job")) if name in jobs]
    partitions_of = {"daily_job": parts.daily, line_shard_job_name("daily_job"): parts.lines}

    archive_sensor_job_name = jobs["ingest_archives_job"].name

    @dg.sensor(job=jobs["ingest_archives_job"], minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING)
    def archive_sensor(context: dg.SensorEvaluationContext, archives: ArchiveStore):
        """Requests a landing-zone scan when archives or collector files (nfcapd, IPFIX) appear or change."""
        fingerprint = landing_zone_fingerprint(archives)
        # Against what this sensor last saw and what the last ingest saw (`iot-assets run`'s included): a
        # daemon started on a landing zone already ingested launches nothing.
        if not fingerprint or fingerprint in (context.cursor, last_ingested_fingerprint(context.instance)):
            if fingerprint and fingerprint != context.cursor:
                context.update_cursor(fingerprint)
            return dg.SkipReason("no new or changed archives or collector files since the last ingest")
        # A scan compares the whole landing zone: one queued or running covers this change, or leaves a
        # landing zone the next tick sees differ from what it ingested (the cursor stays behind meanwhile).
        if runs_in_flight(context.instance, [archive_sensor_job_name]):
            return dg.SkipReason("a landing-zone scan is queued or running; the next scan sees this change")
        context.update_cursor(fingerprint)
        return dg.RunRequest(run_key=f"landing-zone-{fingerprint}")


    # Models retrain weekly (Monday 03:00 UTC), as challengers; on demand in between from the UI.
    weekly_training_schedule = dg.ScheduleDefinition(
        name="weekly_training_schedule", job=jobs["training_job"], cron_schedule="0 3 * * 1",
        run_config=CHALLENGE_RUN_CONFIG,
        execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.STOPPED,
    )


    @dg.asset_sensor(asset_key=dg.AssetKey("feature_drift"), job=jobs["training_job"],
                     default_status=dg.DefaultSensorStatus.STOPPED)
    def drift_retraining_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        """Retrains the models as challengers when many devices drift on a day."""
        materialization = asset_event.asset_materialization
        per_day = materialization.metadata.get("drifted_devices_per_day") if materialization else None
        if per_day is None:
            return dg.SkipReason("no drift summary on the materialization")
        days = days_calling_for_retraining(per_day.value)
        if not days:
            return dg.SkipReason(f"no day with {RETRAIN_DRIFTED_SHARE:.0%} of its devices drifted")
        return dg.RunRequest(run_key=f"drift-{asset_event.run_id}", run_config=CHALLENGE_RUN_CONFIG,
                             tags={"iot_assets/retrain_reason":
                                   f"{len(days)} days with most devices drifted, last {days[-1]}"})


    # Off by default: re-baselining replaces the served detector, and a served model changes only when
    # someone decides so (turn the sensor on under Automation to make it a standing policy).
    @dg.asset_sensor(asset_key=dg.AssetKey("rebaseline_decisions"), job=jobs["rebaseline_job"],
                     default_status=dg.DefaultSensorStatus.STOPPED)
    def rebaseline_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        """Refits the detector and drift reference of the devices rebaseline_decisions names, on their new normal."""
        materialization = asset_event.asset_materialization
        decisions = materialization.metadata.get("decisions") if materialization else None
        if decisions is None or not decisions.value:
            return dg.SkipReason("no device to re-baseline")
        # Decisions recorded before device keys name the device `device_mac` (the same value).
        requests = sorted(f"{d.get('device_key', d.get('device_mac'))}@{d['from_day']}" for d in decisions.value)
        return dg.RunRequest(run_key=f"rebaseline-{asset_event.run_id}",
                             run_config={"ops": {"anomaly_detector": {"config": {"rebaseline": requests}}}},
                             tags={"iot_assets/rebaseline": ", ".join(requests)[:200]})


    @dg.sensor(jobs=daily_jobs, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
    def changed_days_sensor(context: dg.SensorEvaluationContext):
        """Rebuilds every daily asset, through the daily report, of the days new, changed or removed archives
        or collector files touch, and of the days whose daily run gave up."""
        stale, cursor = stale_days(context.instance, json.loads(context.cursor) if context.cursor else {})
        landed = "-".join(str(cursor[a]) for a in LANDING_ASSETS if a in cursor)
        requests = [(f"{landed}-{first}-{last}", first, last) for first, last in day_ranges(sorted(stale), parts)]
        # Days whose daily run gave up (its retries used up: the worker killed each time), as
        # `iot-assets run` would find them (`_unbuilt_days`): asked again, once per failed run.
        redo, failed_run = days_to_redo(context.instance, [context.repository_def.get_job(j.name) for j in daily_jobs],
                                         stale)
        for first, last in day_ranges(sorted(redo), parts):
            failed = sorted({failed_run[d] for d in redo if first <= d <= last})
            requests.append((f"redo-{'-'.join(r[:8] for r in failed)}-{first}-{last}", first, last))
        # The days of a backfill run that failed for good, once each (the run key), as one daily run queued
        # after the days this tick asks for: a day the backfill reached before it was built is built first.
        if not runs_in_flight(context.instance, [job.name for job in daily_jobs]):
            for run_id, first, last in backfill_runs_to_redo(context.instance):
                requests.append((f"redo-backfill-{run_id[:8]}-{first}-{last}", first, last))
        for key_of_range, first, last in requests:
            for job in daily_jobs:
                key = key_of_range + ("" if job.name == "daily_job" else f"-{job.name}")
                if first == last and job.name == "daily_job":
                    yield dg.RunRequest(run_key=key, job_name=job.name, partition_key=first)
                else:  # the days (every shard of them) in one run
                    yield dg.RunRequest(run_key=key, job_name=job.name,
                                        tags=range_tags(*day_range(partitions_of[job.name], first, last)))
        context.update_cursor(json.dumps(cursor))

    # The daily schedules run at 00:30 UTC for the day that just ended (every shard of it).
    daily_schedules = [dg.build_schedule_from_partitioned_job(job, minute_of_hour=30) for job in daily_jobs]
    return dg.Definitions(
        jobs=list(jobs.values()),
        sensors=[archive_sensor, changed_days_sensor, drift_retraining_sensor, rebaseline_sensor, automation_sensor],
        schedules=[*daily_schedules, weekly_training_schedule],
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build(current_deployment())
