"""Running every asset headless: each stage's job over all of its partitions, in order."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import dagster as dg
import pandas as pd
from tqdm import tqdm

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_everything(echo: Callable[[str], None] = print, strict: bool = False) -> bool:
    """Materialize every stage for every partition into the instance at DAGSTER_HOME.

    A failed partition does not stop the others. Returns False if any run failed, and with
    `strict` also if an ERROR-severity check failed; says which either way. (A failed check
    is a finding about the data, such as a drifting device, not a failure of the pipeline.)
    """
    from iot_assets.definitions import defs, lake
    from iot_assets.jobs import PIPELINE

    instance = dg.DagsterInstance.get()
    problems: list[str] = []
    alerts: list[str] = []
    for job_name in PIPELINE:
        job = defs.resolve_job_def(job_name)
        keys = job.partitions_def.get_partition_keys() if job.partitions_def else [None]
        if job.partitions_def:
            # Days before the first or after the last record of any archive hold nothing to build.
            first, last = _data_days(lake)
            kept = [k for k in keys if first <= k <= last]
            if len(kept) < len(keys):
                echo(f"{job_name}: {len(kept)} of {len(keys)} partitions hold data ({first} .. {last})")
            keys = kept
        t0 = time.perf_counter()
        for key in tqdm(keys, desc=job_name, unit="partition", file=sys.stderr, disable=len(keys) == 1):
            label = f"{job_name}[{key}]" if key else job_name
            result = job.execute_in_process(instance=instance, partition_key=key, run_config=QUIET,
                                            raise_on_error=False)
            if not result.success:
                failure = next((e for e in result.all_events if e.is_step_failure), None)
                reason = failure.event_specific_data.error.message.strip() if failure else "run failed"
                problems.append(f"{label}: {reason}")
            for evaluation in result.get_asset_check_evaluations():
                if not evaluation.passed:
                    level = evaluation.severity.value
                    note = f"{label}: check {evaluation.asset_key.to_user_string()}.{evaluation.check_name} " \
                           f"failed ({level}): {evaluation.description}"
                    if evaluation.severity == dg.AssetCheckSeverity.ERROR:
                        (problems if strict else alerts).append(note)
                    else:
                        echo(f"warning: {note}")
        echo(f"{job_name}: {len(keys)} run(s) in {time.perf_counter() - t0:.1f} s")
    echo(f"outputs: Parquet lake {lake.data_dir}/lake, reports {lake.data_dir}/reports, "
         f"Dagster instance {instance.root_directory}")
    for alert in alerts:
        echo(f"ALERT {alert}")
    for problem in problems:
        echo(f"FAILED {problem}")
    return not problems


def _data_days(lake) -> tuple[str, str]:
    manifest = pd.read_parquet(Path(lake.data_dir) / "lake" / "raw_archives" / "part-0.parquet")
    firsts, lasts = manifest["first_day"].dropna(), manifest["last_day"].dropna()
    return (firsts.min(), lasts.max()) if len(firsts) else ("", "")
