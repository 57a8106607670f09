"""A soak: weeks of daily operation on the sample, with runs killed (-9) and re-exports landing.

    python benchmarks/soak.py [--days 28] [--history 7] [--devices 4] [--scale 0.01] [--kill-chance 0.6]
                              [--seed 0] [--work DIR]

A week of history lands first and is built (the models need days to train on: a time split needs
two days at least). Then each simulated day, that day's archives land (one per device, `<device>_<YYYYMMDD>.tar.gz`, made
by `iot_assets.synthetic.sample`) and `iot-assets run` builds what is new, as a separate process
on one data folder and Dagster instance. Faults are injected at random: the run is killed with
SIGKILL after a random delay (then run again, as an operator or the next schedule tick would), and
now and then a renamed copy of an earlier day's archive lands (a re-export). At the end it checks
and prints:

- every day of the range built (a clean_flows partition per day);
- every record accounted for: each archive reconciles (reconciliation.json), each archive's
  decoded rows are all in decoded_flows, and each day's decoded rows = clean + rejected;
- no duplicate rows: no (archive, line) twice in clean_flows, no flow (FLOW_KEY) twice, and every
  re-export's flows are `duplicate_of:` rejects, not clean rows;

then `days simulated`, `faults injected`, `records lost` (0 or the soak failed: exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pandas as pd
import pyarrow.parquet as pq

from iot_assets.core.duplicates import FLOW_KEY
from iot_assets.synthetic import sample

FIRST_DAY = date(2019, 6, 25)
DEVICES = ["nature_remo", "qrio_hub", "xiaomi_mijia_led", "planex_smacam_pantilt", "google_home_gen1",
           "amazon_echo_gen2"]


def land_day(data: Path, day: date, devices: list[str], scale: float, seed: int) -> list[str]:
    """The day's archives into the landing zone, one per device; returns their names."""
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        sample.generate(Path(tmp), day, 1, scale=scale, seed=seed, devices=devices)
        for path in sorted(Path(tmp).glob("*.tar.gz")):
            name = f"{path.name.split('.tar.gz')[0]}_{day:%Y%m%d}.tar.gz"
            shutil.move(path, data / "raw" / f".{name}.partial")
            os.replace(data / "raw" / f".{name}.partial", data / "raw" / name)  # lands whole
            names.append(name)
    return names


def run(data: Path, last_day: date, kill_after_s: float | None) -> tuple[int, bool]:
    """`iot-assets run` up to `last_day`: (exit status, killed)."""
    env = {**os.environ, "IOT_ASSETS_DATA_DIR": str(data), "IOT_ASSETS_START_DATE": FIRST_DAY.isoformat(),
           "IOT_ASSETS_END_DATE": last_day.isoformat(), "IOT_ASSETS_MIN_FREE_GB": "0.1",
           "PYTHONPATH": str(ROOT)}
    env.pop("DAGSTER_HOME", None)
    with open(data / "soak-runs.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "iot_assets.cli", "run"], env=env, stdout=log, stderr=log,
                                start_new_session=True)
        try:
            status = proc.wait(timeout=kill_after_s)
            return status, False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(), True


def read_days(folder: Path, columns: list[str]) -> pd.DataFrame:
    """Every day file of a lake table, read one by one (an empty day's all-null column has another type)."""
    frames = [pq.read_table(path, columns=columns).to_pandas() for path in sorted(folder.glob("day=*/*.parquet"))]
    return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)


def check(data: Path, days: list[str], reexports: dict[str, str]) -> dict:
    """What the end state says (module docstring)."""
    lake = data / "lake"
    built = {p.name.removeprefix("day=") for p in (lake / "clean_flows").iterdir()} if (lake / "clean_flows").exists() else set()
    report = json.loads((data / "reports" / "reconciliation.json").read_text())
    unreconciled = [a["archive"] for a in report["archives"] if not a["reconciled"]]
    decoded = read_days(lake / "decoded_flows", ["archive", "line_number"])
    clean = read_days(lake / "clean_flows", ["archive", "line_number", *FLOW_KEY])
    rejects = read_days(lake / "clean_rejects", ["archive", "line_number", "reason"])
    expected = {a["archive"]: a["decoded"] for a in report["archives"]}
    in_lake = decoded["archive"].value_counts().to_dict()
    lost = sum(max(n - in_lake.get(a, 0), 0) for a, n in expected.items())
    unbalanced = len(decoded) - len(clean) - len(rejects)
    copies = rejects[rejects["reason"].str.startswith("duplicate_of:")]
    return {
        "days_missing": sorted(set(days) - built),
        "unreconciled_archives": unreconciled,
        "records_lost": lost + abs(unbalanced),
        "duplicate_lines": int(clean.duplicated(["archive", "line_number"]).sum()),
        "duplicate_flows": int(clean.duplicated(FLOW_KEY).sum()),
        "reexport_rows_clean": int(clean["archive"].isin(list(reexports)).sum()),
        "reexport_rows_rejected_as_copies": int(copies["archive"].isin(list(reexports)).sum()),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--history", type=int, default=7)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--kill-chance", type=float, default=0.6)
    parser.add_argument("--reexport-chance", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="iot-assets-soak-"))
    data = work / "data"
    (data / "raw").mkdir(parents=True, exist_ok=True)
    devices = DEVICES[: args.devices]
    faults = {"kill -9": 0, "re-export": 0}
    reexports: dict[str, str] = {}
    run_seconds: list[float] = []
    landed: list[str] = []
    t0 = time.perf_counter()
    days = []
    for n in range(args.history):
        days.append((FIRST_DAY + timedelta(days=n)).isoformat())
        landed += land_day(data, FIRST_DAY + timedelta(days=n), devices, args.scale, args.seed * 1000 + n)
    if args.history:
        started = time.perf_counter()
        status, _ = run(data, FIRST_DAY + timedelta(days=args.history - 1), kill_after_s=None)
        # Not a day's run: kills are timed on the daily runs (the first simulated day is never killed).
        print(f"history {days[0]}..{days[-1]}: run exited {status} in {time.perf_counter() - started:.0f} s", flush=True)
    for n in range(args.history, args.history + args.days):
        day = FIRST_DAY + timedelta(days=n)
        days.append(day.isoformat())
        landed += land_day(data, day, devices, args.scale, args.seed * 1000 + n)
        if n and rng.random() < args.reexport_chance:  # a renamed copy of an earlier archive
            original = rng.choice(landed[:-len(devices)])
            copy = original.replace(".tar.gz", "_reexport.tar.gz")
            if copy.split(".tar.gz")[0] not in reexports:
                shutil.copy(data / "raw" / original, data / "raw" / copy)
                reexports[copy.split(".tar.gz")[0]] = original
                faults["re-export"] += 1
        worked = False  # whether a run of this day completed (then later runs find nothing to do)
        while rng.random() < args.kill_chance and run_seconds:  # killed once or more at a random point of a day's run
            started = time.perf_counter()
            status, killed = run(data, day, kill_after_s=rng.uniform(1.0, statistics.median(run_seconds) * 0.9))
            faults["kill -9"] += killed
            if not killed and not worked:
                run_seconds.append(time.perf_counter() - started)
                worked = True
        started = time.perf_counter()
        status, _ = run(data, day, kill_after_s=None)
        if not worked:
            run_seconds.append(time.perf_counter() - started)
        print(f"{day}: run exited {status}; a day's run takes {statistics.median(run_seconds):.0f} s (median); "
              f"faults so far {faults}", flush=True)
    result = check(data, days, reexports)
    print(f"days simulated: {args.days} (after {args.history} of history); faults injected: {sum(faults.values())} ({faults}); "
          f"records lost: {result['records_lost']}; {time.perf_counter() - t0:.0f} s; work folder {work}")
    print(json.dumps(result, indent=2))
    ok = (not result["days_missing"] and not result["unreconciled_archives"] and result["records_lost"] == 0
          and result["duplicate_lines"] == 0 and result["duplicate_flows"] == 0 and result["reexport_rows_clean"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
