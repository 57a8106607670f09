"""Wall time of the runs the daemon launches for a day that lands: the landing-zone scan
(`ingest_archives_job`, asked by archive_sensor) and the day's `daily_job` (asked by
changed_days_sensor), with the shipped in-process executor and with Dagster's multiprocess executor
(a process per step, benchmarks/multiprocess_definitions.py) as the baseline, on copies of one
data folder built by `iot-assets run`.

    python benchmarks/daemon_runs.py [--history 2] [--devices 3] [--scale 0.01] [--seed 0] [--work DIR]

Prints each run's wall time (from the run's start to its end in the instance's run records) per
executor, and the ratio multiprocess / in-process.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dagster as dg
from soak import DEVICES, FIRST_DAY, land_day  # the CLI soak beside this file
from soak_daemon import ROOT, Daemon, cli_run, environment

EXECUTORS = {"in_process": ("-m", "iot_assets.definitions"),
             "multiprocess": ("-f", str(ROOT / "benchmarks" / "multiprocess_definitions.py"))}
JOBS = ("ingest_archives_job", "daily_job")


def run_seconds(instance: dg.DagsterInstance, job_name: str) -> float | None:
    """Wall time of the newest successful run of `job_name`, None if there is none yet."""
    for record in instance.get_run_records(dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.SUCCESS])):
        if record.start_time and record.end_time:
            return record.end_time - record.start_time
    return None


def time_one_day(data: Path, env: dict, code_location: tuple[str, ...], day, devices, scale, seed,
                 timeout_s: float = 1800) -> dict[str, float]:
    """Start the daemon on `data`, land `day`, wait for its scan and its daily_job: their wall times."""
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    daemon = Daemon(env, data / "daemon.log", code_location)
    daemon.start()
    try:
        land_day(data, day, devices, scale, seed)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seconds = {job: run_seconds(instance, job) for job in JOBS}
            if all(s is not None for s in seconds.values()):
                return seconds
            failed = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
            if failed:
                raise RuntimeError(f"run {failed[0].run_id} of {failed[0].job_name} failed: see {data}/daemon.log")
            time.sleep(2)
        raise RuntimeError(f"no successful {JOBS} within {timeout_s:.0f} s: see {data}/daemon.log")
    finally:
        daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", type=int, default=2)
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="iot-assets-daemon-runs-"))
    devices = DEVICES[: args.devices]
    history = [FIRST_DAY + timedelta(days=n) for n in range(args.history)]
    new_day = FIRST_DAY + timedelta(days=args.history)
    built = work / "built"
    (built / "raw").mkdir(parents=True, exist_ok=True)
    for n, day in enumerate(history):
        land_day(built, day, devices, args.scale, args.seed * 1000 + n)
    if cli_run(built, history[-1]) != 0:
        print(f"the history did not build: see {built / 'soak-runs.log'}")
        return 1
    seconds = {}
    for name, code_location in EXECUTORS.items():
        data = work / name
        shutil.copytree(built, data)
        # The same DAGSTER_HOME layout as `built`, under the copy.
        env = environment(data, new_day)
        seconds[name] = time_one_day(data, env, code_location, new_day, devices, args.scale,
                                     args.seed * 1000 + args.history)
        print(f"{name}: " + ", ".join(f"{job} {s:.1f} s" for job, s in seconds[name].items()), flush=True)
    for job in JOBS:
        print(f"{job}: multiprocess / in-process = {seconds['multiprocess'][job] / seconds['in_process'][job]:.2f}")
    print(f"work folder {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
