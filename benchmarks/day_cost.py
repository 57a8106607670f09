"""The fixed cost of a day partition, per stage: measured over several sizes, fitted, and profiled.

    python benchmarks/day_cost.py [--days 7 14] [--scale 0.1] [--low-scale 0.02] [--real DIR] [--real-days 108]
                                  [--data DIR] [--profile-stage daily_flows_job] [--no-floor]
    python benchmarks/day_cost.py --compare-lakes LAKE_A LAKE_B
    python benchmarks/day_cost.py --incremental 7 [--scale 0.1] [--data DIR]

(`--incremental N`: a sample of N + 1 days, `iot-assets run` over its first N days, then over N + 1:
what one new day on top of N built ones costs per stage, against the first run's seconds per day.
`--compare-lakes`: every Parquet table of two lakes of the same sample, e.g. one built before a
change and one after, compared row for row; exits 1 on a difference.)

Sizes: the 25-device sample at (first --days, --scale), (second --days, --scale) and (first --days,
--low-scale) -- days and records per day both vary, so the two can be told apart -- and, when the
real archives are there (default ../shared/data/kddi-iot-2019), those over their first --real-days
days. For each size, in the same run:
  end to end  `iot-assets run` in its own process (benchmarks/backfill.py's `end_to_end`): each
              stage's wall and CPU seconds;
  floor       the same stage functions without Dagster (backfill.py's `floor`);
  json.loads  a plain `json.loads` of every line of the same archives (the issue's baseline).
Then per stage a least-squares fit over the sizes, `seconds = fixed * days + per_record * records`
(records: the clean flows), for wall and for CPU seconds: `fixed` is the cost of a day partition
that is not work. Last, one run of --profile-stage over one range of days of the last synthetic
lake under cProfile, its time grouped by where it goes, per day of the range.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backfill import ROOT, STAGES, end_to_end, floor

from iot_assets.core.archive import find_archives, open_json_member
from iot_assets.synthetic import sample

FIRST_DAY = date(2019, 6, 25)
REAL = ROOT.parent / "shared" / "data" / "kddi-iot-2019"
# Where a profiled second goes: the cumulative time of these entry points (one may hold another: the
# shares overlap), matched on "file:line function".
ENTRY_POINTS = (
    ("the whole run (execute_in_process)", "job_definition.py", "execute_in_process"),
    ("Dagster: run creation, planned events per partition", "run_domain.py", "_log_asset_planned_events"),
    ("Dagster event log: every event stored (SQLite)", "sqlite_event_log.py", "store_event"),
    ("garbage collection", "~", "<built-in method gc.collect>"),
    ("lake IO manager: writes (handle_output, builds included)", "iot_assets/io/lake.py", "handle_output"),
    ("lake IO manager: Parquet reads", "iot_assets/io/lake.py", "read_parquet"),
    ("lake IO manager: Arrow to pandas", "iot_assets/io/lake.py", "load_from_path"),
    ("lake IO manager: Parquet encoding", "iot_assets/io/lake.py", "parquet_bytes"),
    ("pandera validation", "pandera/api/pandas/container.py", "validate"),
    ("per-day metadata (day_metadata.attach)", "iot_assets/defs/day_metadata.py", "attach"),
    ("device windows (features.build_windows)", "iot_assets/core/features.py", "build_windows"),
    ("cleaning (clean.to_device_centric)", "iot_assets/core/clean.py", "to_device_centric"),
)
PROFILE = """
import cProfile, json, pstats, sys
import dagster as dg
from iot_assets.config import Settings
from iot_assets.core.memory import freeze_long_lived
from iot_assets.definitions import build_definitions
from iot_assets.defs.automation.sensors import range_tags
from iot_assets.materialize import QUIET
job_name, first, last, out = sys.argv[1:]
defs = build_definitions(Settings.from_env())
instance = dg.DagsterInstance.get()
job = defs.resolve_job_def(job_name)
freeze_long_lived()
profile = cProfile.Profile()
profile.enable()
result = job.execute_in_process(instance=instance, run_config=QUIET, raise_on_error=True, tags=range_tags(first, last))
profile.disable()
rows = [{"file": f"{file}:{line}", "function": name, "calls": calls, "tottime": tottime, "cumtime": cumtime}
        for (file, line, name), (_, calls, tottime, cumtime, _) in pstats.Stats(profile).stats.items()]
json.dump(rows, open(out, "w"))
"""


def json_loads_seconds(raw: Path) -> tuple[float, int]:
    """A plain `json.loads` of every line of every archive in `raw`: (seconds, lines)."""
    archives, _ = find_archives(raw)
    t0, lines = time.perf_counter(), 0
    for archive in archives:
        with open_json_member(archive) as member:
            rest = b""
            while chunk := member.read(1 << 20):  # the member is a raw stream: iterating it reads a byte at a time
                *whole, rest = (rest + chunk).split(b"\n")
                for line in whole:
                    json.loads(line)
                lines += len(whole)
            if rest.strip():
                json.loads(rest)
                lines += 1
    return time.perf_counter() - t0, lines


def clean_records(data: Path) -> int:
    """The clean flows the run wrote, from the Parquet footers."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in (data / "lake" / "clean_flows").glob("day=*/part-0.parquet"))


def measure(label: str, data: Path, days: int, with_floor: bool) -> dict:
    """One size: end to end, floor and json.loads on the archives in data/raw."""
    for folder in ("lake", "staging", "models", "reports", "dagster_home", "feeds"):
        shutil.rmtree(data / folder, ignore_errors=True)
    last_day = FIRST_DAY + timedelta(days=days - 1)
    print(f"\n## {label}: {days} days ({data})")
    whole_s, stages = end_to_end(data, last_day)
    records = clean_records(data)
    loads_s, lines = json_loads_seconds(data / "raw")
    floors = floor(data / "raw", FIRST_DAY, last_day)[0] if with_floor else {}
    print(f"  {records:,} clean flows, {lines:,} archive lines; whole command {whole_s:.1f} s, "
          f"json.loads {loads_s:.1f} s, load average {os.getloadavg()[0]:.1f}")
    return {"label": label, "days": days, "records": records, "whole_s": whole_s, "json_loads_s": loads_s,
            "lines": lines, "stages": {name: {"wall_s": wall, "cpu_s": cpu, "rss_mb": rss} for name, (wall, cpu, rss) in stages.items()},
            "floor": {name: {"wall_s": wall, "cpu_s": cpu} for name, (wall, cpu, _) in floors.items()},
            "load_average": os.getloadavg()[0]}


def fit_fixed_cost(sizes: list[dict], stage: str, key: str, source: str = "stages") -> tuple[float, float]:
    """(seconds per day, seconds per 1,000 records) of `seconds = fixed * days + per_record * records`, least squares."""
    points = [(s["days"], s["records"] / 1000, s[source][stage][key]) for s in sizes if stage in s[source]]
    if len(points) < 2:
        return float("nan"), float("nan")
    a = np.array([[d, r] for d, r, _ in points])
    b = np.array([t for _, _, t in points])
    (fixed, per_k), *_ = np.linalg.lstsq(a, b, rcond=None)
    return float(fixed), float(per_k)


def profile_stage(data: Path, job: str, days: int, days_per_run: int) -> pd.DataFrame:
    """`job` over its first range of days under cProfile (its own process, the lake of `data` built): seconds by bucket."""
    last_day = FIRST_DAY + timedelta(days=days - 1)
    run_last = FIRST_DAY + timedelta(days=min(days, days_per_run) - 1)
    out = data / "profile.json"
    env = {**os.environ, "IOT_ASSETS_DATA_DIR": str(data), "IOT_ASSETS_END_DATE": last_day.isoformat(),
           "DAGSTER_HOME": str(data / "dagster_home"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROFILE, job, FIRST_DAY.isoformat(), run_last.isoformat(), str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        print(done.stderr[-3000:])
        return pd.DataFrame()
    rows = pd.DataFrame(json.loads(out.read_text()))
    range_days = (run_last - FIRST_DAY).days + 1
    table = []
    for label, file_part, function in ENTRY_POINTS:
        hits = rows[rows["file"].str.contains(file_part, regex=False) & (rows["function"] == function)]
        seconds = float(hits["cumtime"].max()) if len(hits) else 0.0  # the outermost of a recursive entry point
        table.append({"where": label, "calls": int(hits["calls"].sum()), "seconds": round(seconds, 2),
                      "seconds_per_day": round(seconds / range_days, 3)})
    table = pd.DataFrame(table).set_index("where")
    print(f"\n## cProfile of {job} over {range_days} days ({FIRST_DAY}..{run_last}): cumulative seconds "
          f"(an entry point may hold another), load average {os.getloadavg()[0]:.1f}\n")
    print(table.to_markdown())
    top = rows.sort_values("tottime", ascending=False).head(15)
    print("\nTop functions by own time:\n")
    print(top.assign(tottime=top["tottime"].round(2), file=top["file"].str.replace(r".*site-packages/", "", regex=True)
                     .str.replace(str(ROOT) + "/", ""))[["tottime", "calls", "function", "file"]].to_markdown(index=False))
    return table


def report(sizes: list[dict]) -> list[dict]:
    """Each size's stages, and the fitted fixed cost per stage."""
    for size in sizes:
        total = sum(s["wall_s"] for s in size["stages"].values())
        floor_total = sum(s["wall_s"] for s in size["floor"].values())
        print(f"\n### {size['label']}: {size['days']} days, {size['records']:,} clean flows, "
              f"{size['lines']:,} archive lines (load average {size['load_average']:.1f})\n")
        rows = [{"stage": name, "wall_s": round(s["wall_s"], 1), "cpu_s": round(s["cpu_s"], 1),
                 "wall_s_per_day": round(s["wall_s"] / size["days"], 2),
                 "floor_s": round(size["floor"].get(name, {}).get("wall_s", float("nan")), 1),
                 "e2e/floor": round(s["wall_s"] / size["floor"][name]["wall_s"], 1) if name in size["floor"] else None}
                for name, s in size["stages"].items()]
        print(pd.DataFrame(rows).to_markdown(index=False))
        print(f"\nwhole command {size['whole_s']:.1f} s; stages {total:.1f} s; json.loads {size['json_loads_s']:.1f} s: "
              f"whole command / json.loads = {size['whole_s'] / size['json_loads_s']:.1f}x"
              + (f"; floor {floor_total:.1f} s, whole command / floor = {size['whole_s'] / floor_total:.1f}x"
                 if floor_total else ""))
    print(f"\n## Fixed cost per day partition, fitted over {len(sizes)} sizes "
          f"(seconds = fixed * days + per_record * records)\n")
    fits = []
    for stage in STAGES:
        wall_fixed, wall_per_k = fit_fixed_cost(sizes, stage, "wall_s")
        cpu_fixed, cpu_per_k = fit_fixed_cost(sizes, stage, "cpu_s")
        floor_fixed, floor_per_k = fit_fixed_cost(sizes, stage, "wall_s", "floor")
        fits.append({"stage": stage, "fixed_wall_s_per_day": round(wall_fixed, 3),
                     "wall_s_per_1k_records": round(wall_per_k, 4),
                     "fixed_cpu_s_per_day": round(cpu_fixed, 3), "cpu_s_per_1k_records": round(cpu_per_k, 4),
                     "floor_fixed_s_per_day": round(floor_fixed, 3), "floor_s_per_1k_records": round(floor_per_k, 4),
                     "under_0.2_s": bool(wall_fixed < 0.2)})
    print(pd.DataFrame(fits).to_markdown(index=False))
    return fits


def _in_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows as text, sorted on every column: a table compared whatever order its rows were written in."""
    return frame.astype(str).sort_values(list(frame.columns)).reset_index(drop=True)


def compare_lakes(a: Path, b: Path) -> list[str]:
    """Tables of lake `a` and lake `b` that differ (rows compared in a stable order), or that only one has."""
    differ = []
    files_a = {p.relative_to(a) for p in a.rglob("*.parquet")}
    files_b = {p.relative_to(b) for p in b.rglob("*.parquet")}
    differ += [f"only in {a}: {f}" for f in sorted(files_a - files_b)]
    differ += [f"only in {b}: {f}" for f in sorted(files_b - files_a)]
    for relative in sorted(files_a & files_b):
        left, right = (pq.read_table(root / relative).to_pandas() for root in (a, b))
        if list(left.columns) != list(right.columns):
            differ.append(f"{relative}: columns differ")
            continue
        if len(left) != len(right) or not _in_order(left).equals(_in_order(right)):
            differ.append(f"{relative}: {len(left):,} rows against {len(right):,}, or values differ")
    print(f"{len(files_a & files_b)} tables compared, {len(differ)} differ")
    return differ


def incremental(work: Path, days: int, scale: float) -> None:
    """One new day on top of `days` built ones, per stage, against the first run's cost of a day (docstring)."""
    data = work / f"incremental-{days + 1}d-{scale:g}"
    if not (data / "raw").exists():
        sample.generate(data / "raw.partial", FIRST_DAY, days + 1, scale=scale, seed=0)
        (data / "raw.partial").rename(data / "raw")
    for folder in ("lake", "staging", "models", "reports", "dagster_home", "feeds"):
        shutil.rmtree(data / folder, ignore_errors=True)
    print(f"\n## {days} days, then one more ({data})")
    first_s, first = end_to_end(data, FIRST_DAY + timedelta(days=days - 1))
    again_s, again = end_to_end(data, FIRST_DAY + timedelta(days=days))
    rows = [{"stage": name, f"{days}_days_s": round(first[name][0], 1), f"per_day_of_{days}_s": round(first[name][0] / days, 2),
             "one_more_day_s": round(again[name][0], 1) if name in again else 0.0,
             "one_more_day_cpu_s": round(again[name][1], 1) if name in again else 0.0} for name in STAGES if name in first]
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(f"\nwhole command: {days} days {first_s:.1f} s, one more day {again_s:.1f} s "
          f"(load average {os.getloadavg()[0]:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, nargs=2, default=[7, 14])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--low-scale", type=float, default=0.02)
    parser.add_argument("--real", type=Path, default=REAL, help="the real archives (skipped when absent)")
    parser.add_argument("--real-days", type=int, default=108)
    parser.add_argument("--data", type=Path, default=None, help="work folder; samples already there are reused")
    parser.add_argument("--profile-stage", default="daily_flows_job")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--compare-lakes", type=Path, nargs=2, metavar=("LAKE_A", "LAKE_B"))
    parser.add_argument("--incremental", type=int, default=None, metavar="N")
    args = parser.parse_args()
    if args.incremental:
        incremental(args.data or Path(tempfile.mkdtemp(prefix="day-cost-")), args.incremental, args.scale)
        return
    if args.compare_lakes:
        differ = compare_lakes(*args.compare_lakes)
        print("\n".join(differ[:50]))
        sys.exit(1 if differ else 0)
    work = args.data or Path(tempfile.mkdtemp(prefix="day-cost-"))
    sizes = []
    # The two sizes with different flows per day first: with them alone the fit has what it needs.
    synthetic = [(args.days[0], args.scale), (args.days[0], args.low_scale), (args.days[1], args.scale)]
    for days, scale in synthetic:
        data = work / f"sample-{days}d-{scale:g}"
        raw = data / "raw"
        if not raw.exists():  # written aside and renamed: an interrupted run leaves no half sample to reuse
            shutil.rmtree(data / "raw.partial", ignore_errors=True)
            sample.generate(data / "raw.partial", FIRST_DAY, days, scale=scale, seed=0)
            (data / "raw.partial").rename(raw)
        sizes.append(measure(f"sample, 25 devices, scale {scale:g}", data, days, not args.no_floor))
        (work / "day_cost_sizes.json").write_text(json.dumps(sizes, indent=2))  # what is measured so far
    if args.real.is_dir() and any(args.real.glob("*.tar.gz*")):
        data = work / "real"
        (data / "raw").mkdir(parents=True, exist_ok=True)
        for archive in sorted(args.real.glob("*.tar.gz*")):  # into the work folder only, never the repository
            if not (data / "raw" / archive.name).exists():
                shutil.copy2(archive, data / "raw" / archive.name)
        sizes.append(measure(f"real archives ({len(list(args.real.glob('*.tar.gz*')))})", data, args.real_days,
                             not args.no_floor))
    else:
        print(f"\n(no real archives at {args.real}: skipped)")
    fits = report(sizes)
    last_sample = work / f"sample-{args.days[1]}d-{args.scale:g}"
    days_per_run = int(os.environ.get("IOT_ASSETS_DAYS_PER_RUN", "7"))
    table = profile_stage(last_sample, args.profile_stage, args.days[1], days_per_run)
    (work / "day_cost.json").write_text(json.dumps({"sizes": sizes, "fits": fits,
                                                    "profile": table.reset_index().to_dict("records")}, indent=2))
    print(f"\nfigures: {work / 'day_cost.json'}")


if __name__ == "__main__":
    main()
