"""Every asset, headless, on Dagster's own execution: a run per stage, days in ranges.

`iot-assets run` starts this module in a child process with the configuration in its
environment. Each daily stage runs over ranges of at most IOT_ASSETS_DAYS_PER_RUN days, one run
per range (the assets' multi-run backfill policy, one Parquet file per day); when such a run
fails, its days are run one by one, so that one bad day fails alone and the others complete.
Each stage prints its wall time, CPU seconds and peak RSS.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

# XGBoost's OpenMP threads spin while they wait by default: on cores shared with other processes
# that spinning took 47-172 s of CPU for a per-flow baseline fit that takes 2 s with waiting
# threads asleep (same model). Read when the OpenMP runtime loads, so before anything imports
# xgboost; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dagster as dg  # noqa: E402
from tqdm import tqdm  # noqa: E402

from iot_assets.defs.automation.sensors import range_tags  # noqa: E402

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}  # failures are summarised at the end
STAGES = ("ingest_archives_job", "daily_flows_job", "training_job", "daily_scoring_job", "reports_job")
# A failed check of these means a record may be lost: the run fails, with --strict or without.
INTEGRITY_CHECKS = {"archives_reconcile", "decoded_matches_staging", "day_reconciles", "decoded_schema"}


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
            if evaluation.check_name in INTEGRITY_CHECKS or (self.strict and evaluation.severity == dg.AssetCheckSeverity.ERROR):
                self.problems.append(note)
            elif evaluation.severity == dg.AssetCheckSeverity.ERROR:
                self.alerts.append(note)
            else:
                self.echo(f"warning: {note}")


def failure_message(error) -> str:
    """What went wrong, from the innermost cause: Dagster wraps the user's error in its own."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def run_everything(echo: Callable[[str], None] = print, strict: bool = False) -> bool:
    """Materialize every stage over every day of the configured range into the instance at DAGSTER_HOME.

    Returns False if a run failed or a record may be lost (an integrity check failed), and with
    `strict` also if any ERROR-severity check failed; says which either way. (A failed drift
    check is a finding about the data, printed as ALERT, not a failure of the pipeline.)
    """
    from iot_assets.config import Settings
    from iot_assets.definitions import build_definitions

    settings = Settings.from_env()
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.get()
    outcome = Outcome(echo, strict)
    run_stages(defs, instance, defs.resolve_job_def("daily_flows_job").partitions_def.get_partition_keys(), outcome,
               settings.days_per_run)
    echo(f"outputs: lake {settings.data_dir}/lake, models {settings.data_dir}/models, "
         f"reports {settings.data_dir}/reports, Dagster instance {instance.root_directory}")
    for alert in outcome.alerts:
        echo(f"ALERT {alert}")
    for problem in outcome.problems:
        echo(f"FAILED {problem}")
    return not outcome.problems


def run_stages(defs: dg.Definitions, instance: dg.DagsterInstance, days: list[str], outcome: Outcome,
               days_per_run: int) -> None:
    """Each stage's job in order: unpartitioned ones once, daily ones over `days`."""
    for job_name in tqdm(STAGES, desc="iot-assets run", unit="stage", file=sys.stderr):
        job = defs.resolve_job_def(job_name)
        reset_peak_rss()
        t0, cpu0 = time.perf_counter(), time.process_time()
        if job.partitions_def is None:
            outcome.record(job_name, job.execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False))
        else:
            for start in range(0, len(days), days_per_run):
                _run_days(job, days[start:start + days_per_run], instance, outcome)
        span = f" ({len(days)} days)" if job.partitions_def else ""
        outcome.echo(f"{job_name}: {time.perf_counter() - t0:.1f} s{span}, CPU {time.process_time() - cpu0:.1f} s, "
                     f"peak RSS {peak_rss_mb():,.0f} MB")


def _run_days(job, days: list[str], instance, outcome: Outcome) -> None:
    """All days in one run; if it fails, each day on its own so that the good ones complete."""
    label = f"{job.name}[{days[0]}..{days[-1]}]"
    result = job.execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False,
                                    tags=range_tags(days[0], days[-1]))
    if result.success or len(days) == 1:
        outcome.record(label, result)
        return
    outcome.echo(f"{label} failed: running its {len(days)} days one by one")
    for day in tqdm(days, desc=job.name, unit="day", file=sys.stderr, leave=False):
        outcome.record(f"{job.name}[{day}]", job.execute_in_process(instance=instance, run_config=QUIET,
                                                                  raise_on_error=False, partition_key=day))


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


def main() -> None:
    strict = "--strict" in sys.argv[1:]
    sys.exit(0 if run_everything(strict=strict) else 1)


if __name__ == "__main__":
    main()
