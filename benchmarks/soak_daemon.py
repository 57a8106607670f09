"""A soak: weeks of daily operation on the sample, built by Dagster's daemon, with kill -9 of the
daemon and of run workers, re-exports landing and a backfill launched as from the UI.

    python benchmarks/soak_daemon.py [--days 28] [--history 7] [--devices 4] [--scale 0.01] [--day-seconds 120]
                              [--kills-per-day 0.8] [--reexport-chance 0.15] [--backfill-on-day N]
                              [--seed 0] [--work DIR]

A week of history lands first and `iot-assets run` builds it and trains the models (the scoring
needs them; a time split needs two days at least). Then `dagster-daemon run` starts on the same
Dagster instance and data folder, with the code location's sensors as they ship: every simulated
day (`--day-seconds` of wall time), that day's archives land (one per device,
`<device>_<YYYYMMDD>.tar.gz`, made by `iot_assets.synthetic.sample`), the archive sensor asks for a
landing-zone scan and the changed-days sensor for the daily assets of the days it touched. Faults,
at random times of a day:
- kill -9 of the daemon (restarted a few seconds later, as a service manager would);
- kill -9 of a run worker (the process executing a run the daemon launched);
- a re-export: a renamed copy of an earlier day's archive lands.
On `--backfill-on-day` the daily assets of the history days are backfilled with the GraphQL
mutation the UI's "Materialize partitions" sends (`launchPartitionBackfill`, through
`dagster-graphql`); the daemon's backfill loop runs it. After the last day the soak waits until
every day's report is rebuilt after its last landing and nothing is queued or running, then
checks:
- every day built (clean_flows and daily_report of every day, after its archives landed);
- every record accounted for: each archive reconciles (reconciliation.json), each archive's
  decoded rows are all in decoded_flows, and each day's decoded rows = clean + rejected (also
  counted over the days built after their last landing alone, `records_lost_on_settled_days`,
  which says something when the daemon has not caught up);
- no duplicate rows: no (archive, line) twice in clean_flows, no flow (FLOW_KEY) twice, and every
  re-export's flows are `duplicate_of:` rejects, not clean rows;
- served models changed only by recorded decisions: the version each model store serves after
  each day is one a materialization of that model recorded, and the served version changes
  only when a model run materialized it (no training in the daemon's days: it must not change);
- no run left in progress, no two runs in progress at once (the run records' start and end times:
  one run writes the data location at a time, the backfill's included), and the backfill completed;
then prints `days simulated`, `faults injected`, `records lost` (0 or the soak failed: exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
from soak import DEVICES, FIRST_DAY, land_day, read_days  # the CLI soak beside this file
from soak import check as lake_check

from iot_assets.config import Settings
from iot_assets.definitions import build_definitions
from iot_assets.materialize import _job_assets

BIN = Path(sys.executable).parent
IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def daily_assets(env: dict[str, str]) -> list[str]:
    """What the daily job builds (no collector files land in the soak), as the code location defines it."""
    defs = build_definitions(Settings.from_env(env))
    return [a for a in _job_assets(defs.resolve_job_def("daily_job")) if a != "collector_flows"]


def archive_day(name: str) -> str:
    """The day an archive of the soak holds: `<device>_<YYYYMMDD>[_reexport].tar.gz`."""
    stamp = next(part for part in name.split(".tar.gz")[0].split("_") if len(part) == 8 and part.isdigit())
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:]}"


def environment(data: Path, last_day: date) -> dict[str, str]:
    """The settings every process of the soak shares: one data folder, one Dagster instance."""
    env = {**os.environ, "IOT_ASSETS_DATA_DIR": str(data), "IOT_ASSETS_START_DATE": FIRST_DAY.isoformat(),
           "IOT_ASSETS_END_DATE": last_day.isoformat(), "IOT_ASSETS_MIN_FREE_GB": "0.1",
           "DAGSTER_HOME": str(data / "dagster_home"), "PYTHONPATH": str(ROOT)}
    return env


def cli_run(data: Path, last_day: date) -> int:
    """`iot-assets run` up to `last_day`: its exit status."""
    with open(data / "soak-runs.log", "ab") as log:
        return subprocess.run([sys.executable, "-m", "iot_assets.cli", "run"], env=environment(data, last_day),
                              stdout=log, stderr=log, check=False).returncode


class Daemon:
    """`dagster-daemon run` on the code location, in a session of its own (so that only its processes
    are ever signalled); kill -9 kills the daemon process alone, as the kernel's OOM killer would."""

    def __init__(self, env: dict[str, str], log: Path, code_location: tuple[str, ...] = ("-m", "iot_assets.definitions")):
        self.env, self.log, self.code_location = env, log, code_location
        self.proc: subprocess.Popen | None = None
        self.sessions: list[int] = []  # every session started: their processes are the soak's to find and stop

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(BIN / "dagster-daemon"), "run", *self.code_location],
                                         env=self.env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
        self.sessions.append(self.proc.pid)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def run_workers(self) -> list[int]:
        """The processes executing runs: children of the daemon's code servers (`dagster api grpc`)
        started by multiprocessing, not its resource tracker."""
        table = processes(set(self.sessions))
        servers = {pid for pid, (_, cmd) in table.items() if "api grpc" in cmd or ("api" in cmd and "grpc" in cmd)}
        return sorted(pid for pid, (parent, cmd) in table.items()
                      if parent in servers and "spawn_main" in cmd and "resource_tracker" not in cmd)

    def stop(self) -> None:
        """SIGTERM to every session started, then SIGKILL to what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for session in self.sessions:
                try:
                    os.killpg(session, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 30
            while processes(set(self.sessions)) and time.monotonic() < deadline:
                time.sleep(1)
        if self.proc:
            self.proc.wait()


def processes(sessions: set[int]) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of the live processes in `sessions`."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
            if fields[0] == "Z" or int(fields[3]) not in sessions:  # state, ppid, pgrp, session
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(entry.name)] = (int(fields[1]), command)
        except (OSError, ValueError):
            continue  # gone meanwhile
    return table


BACKFILL_MUTATION = """
mutation($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
  }
}"""


def launch_backfill(env: dict[str, str], days: list[str], log: Path) -> str:
    """The daily assets of `days` as one asset backfill, through the GraphQL mutation the UI sends."""
    variables = {"backfillParams": {"partitionNames": days, "title": "soak: older days",
                                    "assetSelection": [{"path": [a]} for a in daily_assets(env)]}}
    with open(log, "ab") as err:
        out = subprocess.run([str(BIN / "dagster-graphql"), "-m", "iot_assets.definitions", "-t", BACKFILL_MUTATION,
                              "-v", json.dumps(variables)], env=env, cwd=ROOT, capture_output=False,
                             stdout=subprocess.PIPE, stderr=err, text=True, check=False).stdout
    response, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])  # the response, then its log lines
    answer = response["data"]["launchPartitionBackfill"]
    if answer["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"the backfill was not launched: {answer}")
    return answer["backfillId"]


def materialized_at(instance: dg.DagsterInstance, asset: str, days: list[str]) -> dict[str, float]:
    """When each day of `asset` was last materialized."""
    times: dict[str, float] = {}
    for record in all_records(instance, dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=days)):
        times[record.partition_key] = max(times.get(record.partition_key, 0.0), record.timestamp)
    return times


def all_records(instance: dg.DagsterInstance, records_filter: dg.AssetRecordsFilter) -> list:
    """Every materialization record the filter selects, a page (the instance's most) at a time."""
    records, cursor = [], None
    while True:
        page = instance.fetch_materializations(records_filter, limit=10_000, cursor=cursor)
        records += page.records
        if not page.has_more:
            return records
        cursor = page.cursor


def unbuilt_days(instance: dg.DagsterInstance, landed_at: dict[str, float]) -> list[str]:
    """Days whose clean flows or report were not materialized after their archives last landed."""
    days = sorted(landed_at)
    clean, report = materialized_at(instance, "clean_flows", days), materialized_at(instance, "daily_report", days)
    return [d for d in days if min(clean.get(d, 0.0), report.get(d, 0.0)) <= landed_at[d]]


def busy(instance: dg.DagsterInstance) -> int:
    """Runs queued or in progress, plus backfills still requested."""
    runs = instance.get_runs_count(dg.RunsFilter(statuses=IN_PROGRESS))
    from dagster._core.execution.backfill import BulkActionStatus

    return runs + len(instance.get_backfills(status=BulkActionStatus.REQUESTED))


def served_versions(data: Path) -> dict[str, str]:
    """The version each model store serves (its `current` pointer)."""
    from iot_assets.io.models import ModelStore

    store = ModelStore(str(data))
    return {asset: store.current(asset) for asset in sorted(p.name for p in (data / "models").iterdir() if p.is_dir())}


def promoted_versions(data: Path, asset: str) -> list[tuple[float, str]]:
    """(when, version) of every promotion in the model's promotion log: the recorded decisions."""
    from datetime import datetime

    from iot_assets.io.models import ModelStore

    return [(datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp(), e["to_version"])
            for e in ModelStore(str(data)).promotions(asset) if e["event"] == "promoted"]


def model_changes(data: Path, served_per_day: list[tuple[float, dict[str, str]]]) -> list[str]:
    """Served versions not explained by a recorded decision: each day's must be the newest version the
    promotion log says was promoted by then (a proposal moves nothing)."""
    problems = []
    for asset in served_per_day[0][1]:
        promoted = promoted_versions(data, asset)
        for when, served in served_per_day:
            decided = [version for at, version in promoted if at <= when]
            if not decided or decided[-1] != served[asset]:
                problems.append(f"{asset}: serves {served[asset]} at {when:.0f}, the last recorded promotion "
                                f"was to {decided[-1] if decided else None}")
    return problems


def rows_per_day(folder: Path) -> dict[str, int]:
    """Rows of each day of a lake table, from the Parquet footers."""
    counts: dict[str, int] = {}
    for path in folder.glob("day=*/*.parquet"):
        day = path.parent.name.removeprefix("day=")
        counts[day] = counts.get(day, 0) + pq.ParquetFile(path).metadata.num_rows
    return counts


def check(data: Path, days: list[str], reexports: dict[str, str], settled: list[str]) -> dict:
    """What the lake and the reports say at the end (module docstring); `settled`: the days built after
    their archives last landed (all of them, once the daemon caught up), on which nothing may be missing."""
    lake = data / "lake"
    base = lake_check(data, days, reexports)
    report = json.loads((data / "reports" / "reconciliation.json").read_text())
    expected = {a["archive"]: a["decoded"] for a in report["archives"]}
    decoded = read_days(lake / "decoded_flows", ["archive"])
    in_lake = decoded["archive"].value_counts().to_dict()
    landed = {name.split(".tar.gz")[0] for name in os.listdir(data / "raw") if name.endswith(".tar.gz")}
    per_day = {table: rows_per_day(lake / table) for table in ("decoded_flows", "clean_flows", "clean_rejects")}
    lost_settled = sum(max(n - in_lake.get(a, 0), 0) for a, n in expected.items() if archive_day(a) in settled)
    lost_settled += sum(abs(per_day["decoded_flows"].get(d, 0) - per_day["clean_flows"].get(d, 0)
                            - per_day["clean_rejects"].get(d, 0)) for d in settled)
    return {"records_lost_on_settled_days": lost_settled, **base,
            "archives_not_in_report": sorted(landed - set(expected)), "records_decoded": len(decoded)}


def overlapping_runs(records) -> list[str]:
    """Pairs of runs (every run of the soak writes its one data location) that were in progress at the same
    time, from the run records' start and end times: the queue allows one at a time."""
    spans = sorted((r.start_time, r.end_time or time.time(), r.dagster_run) for r in records if r.start_time)
    overlaps, busy_until, holder = [], 0.0, None
    for start, end, run in spans:
        if start < busy_until:
            overlaps.append(f"{holder.job_name} {holder.run_id[:8]} and {run.job_name} {run.run_id[:8]} "
                            f"({busy_until - start:.1f} s)")
        if end > busy_until:
            busy_until, holder = end, run
    return overlaps


def inject_kill(daemon: Daemon, rng: random.Random, until: float, faults: dict[str, int]) -> None:
    """kill -9 of a run worker (the first to appear before `until`) or of the daemon, at random."""
    if rng.random() < 0.5:
        while time.monotonic() < until:
            workers = daemon.run_workers()
            if workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
                faults["kill -9 run worker"] += 1
                return
            time.sleep(0.5)
        return  # no run in progress this time: the next fault may find one
    daemon.kill9()
    faults["kill -9 daemon"] += 1
    time.sleep(rng.uniform(2, 10))  # the service manager restarts it
    daemon.start()


def drain(instance: dg.DagsterInstance, landed_at: dict[str, float], timeout_s: float) -> list[str]:
    """Wait until every day is built after its last landing and nothing is queued or running (twice,
    a sensor interval apart: a sensor may still ask for something); returns the days still unbuilt."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        if not unbuilt_days(instance, landed_at) and not busy(instance):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 75:
                break
        else:
            quiet_since = None
        time.sleep(5)
    return unbuilt_days(instance, landed_at)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--history", type=int, default=7)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--day-seconds", type=float, default=120.0, help="Wall time of a simulated day.")
    parser.add_argument("--kills-per-day", type=float, default=0.8)
    parser.add_argument("--reexport-chance", type=float, default=0.15)
    parser.add_argument("--backfill-on-day", type=int, default=None, help="Default: the middle simulated day.")
    parser.add_argument("--drain-minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--check-only", action="store_true",
                        help="Only the end checks, on the work folder of a soak that stopped (its soak-state.json).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="iot-assets-soak-"))
    if args.check_only:
        state = json.loads((work / STATE).read_text())
    else:
        state = simulate(args, work)
        if state is None:
            return 1
    return report(work, state)


STATE = "soak-state.json"  # what the end checks need, written after every day


def simulate(args, work: Path) -> dict | None:
    """The history, then the daemon's days with their faults; the state the checks need (None: no history)."""
    rng = random.Random(args.seed)
    data = work / "data"
    (data / "raw").mkdir(parents=True, exist_ok=True)
    devices = DEVICES[: args.devices]
    history = [FIRST_DAY + timedelta(days=n) for n in range(args.history)]
    simulated = [FIRST_DAY + timedelta(days=args.history + n) for n in range(args.days)]
    backfill_on = args.days // 2 if args.backfill_on_day is None else args.backfill_on_day
    faults = {"kill -9 daemon": 0, "kill -9 run worker": 0, "re-export": 0}
    reexports: dict[str, str] = {}
    landed: list[str] = []
    landed_at: dict[str, float] = {}
    t0 = time.perf_counter()

    for n, day in enumerate(history):
        landed += land_day(data, day, devices, args.scale, args.seed * 1000 + n)
        landed_at[day.isoformat()] = time.time()
    started = time.perf_counter()
    status = cli_run(data, history[-1])
    print(f"history {history[0]}..{history[-1]}: `iot-assets run` exited {status} in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    if status != 0:
        print(f"the history did not build: see {data / 'soak-runs.log'}")
        return None

    env = environment(data, simulated[-1])
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    daemon = Daemon(env, data / "soak-daemon.log")
    state = {"history": len(history), "simulated": len(simulated), "faults": faults, "reexports": reexports,
             "landed_at": landed_at, "served_per_day": [(time.time(), served_versions(data))], "backfill_id": None,
             "unbuilt": None}

    def save() -> None:
        state["seconds"] = time.perf_counter() - t0
        (work / f".{STATE}.partial").write_text(json.dumps(state))
        os.replace(work / f".{STATE}.partial", work / STATE)

    daemon.start()
    try:
        for n, day in enumerate(simulated):
            day_end = time.monotonic() + args.day_seconds
            names = land_day(data, day, devices, args.scale, args.seed * 1000 + args.history + n)
            landed += names
            landed_at[day.isoformat()] = time.time()
            if rng.random() < args.reexport_chance:  # a renamed copy of an earlier archive
                original = rng.choice(landed[:-len(names)])
                copy = original.replace(".tar.gz", "_reexport.tar.gz")
                if copy.split(".tar.gz")[0] not in reexports:
                    shutil.copy(data / "raw" / original, data / "raw" / f".{copy}.partial")
                    os.replace(data / "raw" / f".{copy}.partial", data / "raw" / copy)
                    reexports[copy.split(".tar.gz")[0]] = original
                    landed_at[archive_day(copy)] = time.time()
                    faults["re-export"] += 1
            if n == backfill_on:
                older = [d.isoformat() for d in history]
                state["backfill_id"] = launch_backfill(env, older, data / "soak-daemon.log")
                for d in older:  # the backfill must rebuild them
                    landed_at[d] = time.time()
                print(f"{day}: backfill {state['backfill_id']} of {older[0]}..{older[-1]} launched", flush=True)
            kills = int(args.kills_per_day) + (rng.random() < args.kills_per_day % 1)
            for at in sorted(rng.uniform(3, args.day_seconds - 3) for _ in range(kills)):
                time.sleep(max(0.0, day_end - args.day_seconds + at - time.monotonic()))
                inject_kill(daemon, rng, day_end, faults)
            time.sleep(max(0.0, day_end - time.monotonic()))
            state["served_per_day"].append((time.time(), served_versions(data)))
            save()
            print(f"{day}: {len(unbuilt_days(instance, landed_at))} days waiting to be built, {busy(instance)} runs "
                  f"queued or in progress; faults so far {faults}", flush=True)
        state["unbuilt"] = drain(instance, landed_at, args.drain_minutes * 60)
    finally:
        daemon.stop()
        state["served_per_day"].append((time.time(), served_versions(data)))
        save()
    return state


def report(work: Path, state: dict) -> int:
    """The end checks (module docstring), printed; 0 when they all pass."""
    data = work / "data"
    instance = dg.DagsterInstance.from_config(str(data / "dagster_home"))
    landed_at, reexports = state["landed_at"], state["reexports"]
    served_per_day = state["served_per_day"]
    unbuilt = unbuilt_days(instance, landed_at)
    result = check(data, sorted(landed_at), reexports, sorted(set(landed_at) - set(unbuilt)))
    result["days_not_rebuilt_after_landing"] = unbuilt
    result["model_changes_not_recorded"] = model_changes(data, served_per_day)
    result["served_model_versions"] = {a: sorted({s[a] for _, s in served_per_day}) for a in served_per_day[0][1]}
    runs = instance.get_run_records()
    result["runs_by_status"] = pd.Series([r.dagster_run.status.value for r in runs]).value_counts().to_dict()
    result["runs_retried"] = sum(1 for r in runs if "dagster/parent_run_id" in r.dagster_run.tags
                                 and "dagster/backfill" not in r.dagster_run.tags)
    result["runs_left_in_progress"] = [r.dagster_run.run_id for r in runs if r.dagster_run.status in IN_PROGRESS]
    result["runs_overlapping"] = overlapping_runs(runs)
    backfill = instance.get_backfill(state["backfill_id"]) if state["backfill_id"] else None
    result["backfill"] = backfill.status.value if backfill else None
    # A backfill run that failed (it reached a day not built yet) is redone by changed_days_sensor as a
    # daily run; the backfill itself still ends COMPLETED_FAILED. Its days are judged by `unbuilt` above.
    failed = [r.dagster_run.run_id for r in runs if r.dagster_run.tags.get("dagster/backfill") == state["backfill_id"]
              and r.dagster_run.status == dg.DagsterRunStatus.FAILURE]
    redone = {r.dagster_run.tags.get("dagster/run_key", "").split("-")[2] for r in runs
              if r.dagster_run.tags.get("dagster/run_key", "").startswith("redo-backfill-")
              and r.dagster_run.status == dg.DagsterRunStatus.SUCCESS}
    result["backfill_runs_failed_not_redone"] = [i for i in failed if i[:8] not in redone]
    faults = state["faults"]
    print(f"days simulated: {state['simulated']} (after {state['history']} of history); faults injected: "
          f"{sum(faults.values())} ({faults}); records lost: {result['records_lost']}; "
          f"{state.get('seconds', 0):.0f} s; work folder {work}")
    print(json.dumps(result, indent=2))
    ok = (not result["days_missing"] and not unbuilt and not result["unreconciled_archives"]
          and not result["archives_not_in_report"] and result["records_lost"] == 0
          and result["duplicate_lines"] == 0 and result["duplicate_flows"] == 0 and result["reexport_rows_clean"] == 0
          and not result["model_changes_not_recorded"] and not result["runs_left_in_progress"]
          and not result["runs_overlapping"]
          and (backfill is None or result["backfill"] in ("COMPLETED", "COMPLETED_SUCCESS")
               or (result["backfill"] == "COMPLETED_FAILED" and not result["backfill_runs_failed_not_redone"])))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
