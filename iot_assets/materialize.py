"""What `iot-assets run` materializes: everything not built yet, through Dagster's own execution on the
instance the UI and the daemon use.

Each stage (`iot_assets.defs.stages`, in order) is one of the code location's jobs (a daily stage
two when the subscriber lines are sharded: its day x line shard job after its day job), executed in
this process (`execute_in_process`) and recorded in the instance like any run the daemon launches: the runs carry the data location's tag,
so the instance's queue (`instance_yaml`: at most one run per data location at a time) holds the
daemon's and the UI's runs while one of these is in progress, and each of these waits for theirs.
Orphans (runs of a process that died, kill -9 included) are marked failed, not waited for.

Idempotent: a daily stage runs only the days not yet built, or rebuilt by an earlier stage of this run
(a new or changed archive); training runs when a day was (re)built or a model is missing; the reports
follow. A second `iot-assets run` on an unchanged landing zone checks the archives and stops there.
Each daily stage runs over ranges of at most IOT_ASSETS_DAYS_PER_RUN days, one run per range (one
Parquet file per day); when such a run fails, its days are run one by one, so that one bad day fails
alone and the others complete. Each stage prints its wall time, CPU seconds and peak RSS.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import dagster as dg
from tqdm import tqdm

from iot_assets.defs.automation.jobs import LOCATION_TAG, PID_TAG, STAGE_JOBS, line_shard_job_name
from iot_assets.defs.automation.sensors import range_tags
from iot_assets.defs.partitions import day_range, keys_of_days
from iot_assets.defs.stages import DAILY_FLOWS, INGEST, STAGES
from iot_assets.io.lock import process_alive

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}  # failures are summarised at the end
# A failed check of these means a record may be lost: the run fails, with --strict or without.
INTEGRITY_CHECKS = {"archives_reconcile", "decoded_matches_staging", "day_reconciles", "decoded_schema",
                    "collector_files_reconcile", "collector_flows_match_staging"}
# A failed check of these is an archive that did not land: an ALERT naming why, and the run fails.
FAILING_ALERTS = {"archives_decode"}
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def instance_yaml() -> str:
    """The embedded instance `iot-assets run` creates: runs queued, one at a time per data location; a run
    whose process died (kill -9, OOM) retried by the daemon."""
    # nux off: the community sign-up modal of a fresh instance would cover the analyst's first page.
    # Retries: a sensor asks once per landing (its cursor moves on), so a daemon-launched run whose worker
    # died would leave its days unbuilt for good; a run that failed on its data (a step failed) is not
    # retried. Monitoring fails a run stuck in STARTING (the daemon killed while launching it), which
    # then is retried too.
    # Pools at run granularity: every asset is in its data location's pool (iot_assets.definitions), so a
    # run that writes the location stays QUEUED (the UI shows it blocked on the pool) until no run of the
    # location is in progress: the UI's asset backfills (`__ASSET_JOB`, no location tag) included. The
    # location tag's limit stays for the runs of the location's jobs that write nothing (checks only).
    return f"""telemetry:
  enabled: false
nux:
  enabled: false
run_retries:
  enabled: true
  max_retries: 3
  retry_on_asset_or_op_failure: false
run_monitoring:
  enabled: true
  start_timeout_seconds: 300
  poll_interval_seconds: 30
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  pools:
    granularity: run
    default_limit: 1
  runs:
    tag_concurrency_limits:
      - key: {LOCATION_TAG}
        value:
          applyLimitPerUniqueValue: true
        limit: 1
"""


class Outcome:
    def __init__(self, echo: Callable[[str], None], strict: bool):
        self.echo, self.strict = echo, strict
        self.problems: list[str] = []
        self.alerts: list[str] = []

    def record(self, label: str, result: dg.ExecuteInProcessResult, report_failure: bool = True) -> None:
        if not result.success and report_failure:
            for event in result.all_events:
                if event.is_step_failure:
                    self.problems.append(f"{label}: {event.step_key}: "
                                         f"{failure_message(event.event_specific_data.error)[:500]}")
            if not any(p.startswith(label) for p in self.problems):
                self.problems.append(f"{label}: run failed")
        for evaluation in result.get_asset_check_evaluations():
            if evaluation.passed:
                continue
            description = evaluation.description or ""
            note = (f"{label}: check {evaluation.asset_key.to_user_string()}.{evaluation.check_name} "
                    f"failed ({evaluation.severity.value}): "
                    + (description if len(description) <= 400 else description[:400] + " ... (more in the UI)"))
            error = evaluation.severity == dg.AssetCheckSeverity.ERROR
            if evaluation.check_name in FAILING_ALERTS:
                self.alerts.append(note)
                self.problems.append(f"{label}: check {evaluation.check_name} failed: an archive did not land "
                                     f"(the ALERT above says why)")
            elif evaluation.check_name in INTEGRITY_CHECKS or (self.strict and error):
                self.problems.append(note)
            elif error:
                self.alerts.append(note)
            else:
                self.echo(f"warning: {note}")


def failure_message(error) -> str:
    """What went wrong, from the innermost cause: Dagster wraps the user's error in its own."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def wait_for_location(instance: dg.DagsterInstance, location: str, echo: Callable[[str], None],
                      poll_seconds: float = 2.0) -> None:
    """Wait until no other run on `location` is in progress; a run whose process is gone is marked failed."""
    announced = False
    while True:
        busy = []
        for record in instance.get_run_records(dg.RunsFilter(tags={LOCATION_TAG: location}, statuses=IN_PROGRESS)):
            run = record.dagster_run
            pid = run.tags.get(PID_TAG)
            if pid and int(pid) != os.getpid() and not process_alive(int(pid)):
                instance.report_run_failed(run, f"its process {pid} is gone (killed?): an orphan, marked failed")
                echo(f"run {run.run_id} of {run.job_name}: its process {pid} is gone; marked failed")
                continue
            busy.append(run)
        if not busy:
            return
        if not announced:
            echo(f"waiting for {len(busy)} run(s) on {location} to finish: " + ", ".join(r.job_name for r in busy))
            announced = True
        time.sleep(poll_seconds)


def materialize_missing(defs: dg.Definitions, instance: dg.DagsterInstance, days: list[str], outcome: Outcome,
                        days_per_run: int, location: str) -> None:
    """Each stage's job in order, for what is not built yet (module docstring)."""
    tags = {LOCATION_TAG: location, PID_TAG: str(os.getpid())}
    rebuilt: set[str] = set()  # days an earlier stage of this run (re)built
    ran_any = False
    jobs = [(stage, job) for stage in STAGES for job in stage_jobs(defs, stage)]
    for stage, job in tqdm(jobs, desc="iot-assets run", unit="stage", file=sys.stderr):
        job_name = job.name
        if job.partitions_def is None:
            todo = stage == INGEST or bool(rebuilt) or ran_any or _missing(instance, job)
        else:
            todo_days = sorted(set(days) & (rebuilt | _unbuilt_days(instance, stage, job, days)))
            todo = bool(todo_days)
        if not todo:
            outcome.echo(f"{job_name}: nothing to build")
            continue
        reset_peak_rss()
        t0, cpu0 = time.perf_counter(), time.process_time()
        wait_for_location(instance, location, outcome.echo)
        if job.partitions_def is None:
            result = job.execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False, tags=tags)
            outcome.record(job_name, result)
            if stage == INGEST:
                rebuilt |= _changed_days(result)
            else:
                ran_any = True
            span = ""
        else:
            for start in range(0, len(todo_days), days_per_run):
                _run_days(job, todo_days[start:start + days_per_run], instance, outcome, tags)
            rebuilt |= set(todo_days)
            ran_any = True
            span = f" ({len(todo_days)} of {len(days)} days)"
        outcome.echo(f"{job_name}: {time.perf_counter() - t0:.1f} s{span}, CPU {time.process_time() - cpu0:.1f} s, "
                     f"peak RSS {peak_rss_mb():,.0f} MB")


def stage_jobs(defs: dg.Definitions, stage: str) -> list[dg.JobDefinition]:
    """A stage's jobs in the order they run: its job, then its day x line shard job when the lines are sharded."""
    name = STAGE_JOBS[stage][0]
    repository = defs.get_repository_def()
    return [defs.resolve_job_def(n) for n in (name, line_shard_job_name(name)) if repository.has_job(n)]


def _job_assets(job: dg.JobDefinition) -> list[str]:
    return sorted(key.to_user_string() for key in job.asset_layer.selected_asset_keys)


def _changed_days(result: dg.ExecuteInProcessResult) -> set[str]:
    """The days the landing zone's new, changed or removed archives and collector files touch (raw_archives
    and collector_files say)."""
    days: set[str] = set()
    for node in ("raw_archives", "collector_files"):
        for materialization in result.asset_materializations_for_node(node):
            changed = materialization.metadata.get("changed_days")
            days |= set(changed.value) if changed else set()
    return days


def _unbuilt_days(instance: dg.DagsterInstance, stage: str, job: dg.JobDefinition, days: list[str]) -> set[str]:
    """Days some daily asset of the stage has no materialization of, or one older than what it is built from.

    Older: the landing zone said the day changed (a new or changed archive) after the stage last built it,
    or (scoring) the day's windows were rebuilt after it was scored. A run killed between two stages, or
    inside one, leaves such days: the next run rebuilds them, the changed days are not only in the killed
    run's memory.
    """
    built = {name: _day_times(instance, name, days, job.partitions_def) for name in _job_assets(job)}
    built_at = {day: min((times.get(day) for times in built.values()), key=lambda t: t or 0) for day in days}
    if stage == DAILY_FLOWS:
        source_at = _changed_at(instance)
    else:
        source_at = _day_times(instance, "device_windows", days)
    return {day for day in days if not built_at[day] or source_at.get(day, 0) > built_at[day]}


def _day_times(instance: dg.DagsterInstance, asset: str, days: list[str],
               partitions_def: dg.PartitionsDefinition | None = None) -> dict[str, float]:
    """When each day of `asset` was last materialized, every shard of it if sharded (days never built are missing)."""
    day_of = keys_of_days(partitions_def, days)
    times: dict[str, float] = {}
    records_filter = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=list(day_of))
    for record in _records(instance, records_filter):
        times.setdefault(record.partition_key, record.timestamp)  # newest first
    by_day: dict[str, list[float]] = {}
    for key, day in day_of.items():
        by_day.setdefault(day, []).append(times.get(key))
    # A day is built when all its partitions are, as of the oldest of them.
    return {day: min(shards) for day, shards in by_day.items() if None not in shards}


def _records(instance: dg.DagsterInstance, records_filter: dg.AssetRecordsFilter):
    """Every materialization record the filter selects, newest first, a page at a time."""
    cursor = None
    while True:
        page = instance.fetch_materializations(records_filter, limit=5_000, cursor=cursor)
        yield from page.records
        if not page.has_more:
            return
        cursor = page.cursor


def _changed_at(instance: dg.DagsterInstance) -> dict[str, float]:
    """When the landing zone last said each day changed (raw_archives' and collector_files' `changed_days`)."""
    changed: dict[str, float] = {}
    for asset in ("raw_archives", "collector_files"):
        for record in _records(instance, dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset))):
            days = record.asset_materialization.metadata.get("changed_days")
            for day in days.value if days else []:
                changed[day] = max(changed.get(day, 0.0), record.timestamp)
    return changed


def _missing(instance: dg.DagsterInstance, job: dg.JobDefinition) -> bool:
    """Whether an asset of an unpartitioned stage was never materialized."""
    return any(instance.get_latest_materialization_event(dg.AssetKey(name)) is None for name in _job_assets(job))


def _run_days(job, days: list[str], instance, outcome: Outcome, tags: dict[str, str]) -> None:
    """All days in one run; if it fails, each day on its own so that the good ones complete."""
    label = f"{job.name}[{days[0]}..{days[-1]}]"
    result = job.execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False,
                                    tags={**tags, **range_tags(*day_range(job.partitions_def, days[0], days[-1]))})
    if result.success or len(days) == 1:
        outcome.record(label, result)
        return
    outcome.echo(f"{label} failed: running its {len(days)} days one by one")
    for day in tqdm(days, desc=job.name, unit="day", file=sys.stderr, leave=False):
        # A day is a partition, or (day x shard) the range of its shards.
        sharded = isinstance(job.partitions_def, dg.MultiPartitionsDefinition)
        one_day = ({"tags": {**tags, **range_tags(*day_range(job.partitions_def, day, day))}} if sharded
                   else {"tags": tags, "partition_key": day})
        outcome.record(f"{job.name}[{day}]", job.execute_in_process(instance=instance, run_config=QUIET,
                                                                  raise_on_error=False, **one_day))


def reset_peak_rss() -> None:
    """Start a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """The process's peak resident memory since the last reset, in MB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
