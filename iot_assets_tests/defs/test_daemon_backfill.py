"""One run writes a data location at a time, the UI's asset backfills included: the daemon on a sample
`iot-assets run` built, a backfill of older days launched with the GraphQL mutation the UI sends
(`launchPartitionBackfill`, through dagster-graphql) while a sensor-style `daily_job` run of the newest day
is queued; the backfill also targets the newest day's dependents (the lookbacks' partition mappings).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus

from iot_assets_tests.support.browser import ROOT, built_sample

DAYS = ["2019-06-25", "2019-06-26", "2019-06-27"]
BIN = os.path.dirname(sys.executable)
pytestmark = pytest.mark.slow


def _soak_daemon():
    """benchmarks/soak_daemon.py (its GraphQL backfill launch and its overlap check), imported by path."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("soak_daemon", ROOT / "benchmarks" / "soak_daemon.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _days_of(run: dg.DagsterRun) -> list[str]:
    if "dagster/partition" in run.tags:
        return [run.tags["dagster/partition"]]
    return [run.tags.get("dagster/asset_partition_range_start"), run.tags.get("dagster/asset_partition_range_end")]


def test_a_ui_backfill_and_a_daily_run_on_one_location_never_overlap_and_both_complete(tmp_path):
    soak = _soak_daemon()
    env = built_sample(tmp_path, DAYS)
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    before = {r.run_id for r in instance.get_runs()}
    # The newest day's daily_job, queued as a sensor queues it; then the backfill of the older days. Both
    # before the daemon starts: its run queue and its backfill loop then meet them at once, so the
    # backfill's first run is queued while the daily run holds the location, on an idle machine too
    # (with the daemon already running, a quick daily run could end before the backfill's first run exists).
    launched = subprocess.run([f"{BIN}/dagster", "job", "launch", "-m", "iot_assets.definitions", "-j", "daily_job",
                               "--tags", json.dumps({"dagster/partition": DAYS[-1]})],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-2000:]
    backfill_id = soak.launch_backfill(env, DAYS[:2], tmp_path / "graphql.log")
    log = tmp_path / "daemon.log"
    with open(log, "w") as log_file:
        daemon = subprocess.Popen([f"{BIN}/dagster-daemon", "run", "-m", "iot_assets.definitions"], env=env, cwd=ROOT,
                                  stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            backfill = instance.get_backfill(backfill_id)
            in_flight = instance.get_runs_count(dg.RunsFilter(statuses=soak.IN_PROGRESS))
            if backfill.status != BulkActionStatus.REQUESTED and not in_flight:
                break
            assert daemon.poll() is None, log.read_text()[-3000:]
            time.sleep(3)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)

    records = [r for r in instance.get_run_records() if r.dagster_run.run_id not in before]
    runs = {r.dagster_run.run_id: r.dagster_run for r in records}
    statuses = {(run.job_name, tuple(_days_of(run)), run.status.value) for run in runs.values()}
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, (backfill.status, statuses, log.read_text()[-3000:])
    assert {run.status for run in runs.values()} == {dg.DagsterRunStatus.SUCCESS}, statuses
    backfill_runs = [r for r in records if r.dagster_run.tags.get("dagster/backfill") == backfill_id]
    (daily,) = [r for r in records if r.dagster_run.job_name == "daily_job"]
    # The backfill reached the newest day's dependents (the day after, the week, two weeks), after that
    # day was built.
    reaching = [r for r in backfill_runs if DAYS[-1] in _days_of(r.dagster_run)]
    assert reaching and all(r.start_time >= daily.end_time for r in reaching), statuses
    # One run at a time, from the run records; and the queue did hold one: a run queued while another ran.
    assert soak.overlapping_runs(records) == []
    # Held: b was queued before a ended, a started first, and b started only after a ended (without the
    # pool the queue launches both at once).
    held = [(a.dagster_run.job_name, b.dagster_run.job_name) for a in records for b in records
            if a is not b and b.create_timestamp.timestamp() < a.end_time and a.start_time <= b.start_time
            and b.start_time >= a.end_time]
    assert held, statuses
