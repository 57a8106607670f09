"""Build a small evaluation lake in-process (no Dagster): clean flows and device windows per day.

    python benchmarks/lakes.py sample-injected OUT [--days 14] [--scale 0.05] [--seed 0] [--episode-seed 11]
    python benchmarks/lakes.py rewindow LAKE OUT

writes a fresh sample of all 25 devices into OUT/raw, injects the five episode types into
EVERY device (`iot_assets.synthetic.inject`, episodes in OUT/episodes/episodes.csv), then decodes,
cleans and builds windows into OUT/lake/<table>/day=YYYY-MM-DD/part-0.parquet, the
layout `iot-assets run` writes. The models evaluation (benchmarks/models_eval.py) reads it
beside /work/lakes/sample and /work/lakes/real.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iot_assets.core.archive import find_archives  # noqa: E402
from iot_assets.core.clean import to_device_centric  # noqa: E402
from iot_assets.core.features import build_windows  # noqa: E402
from iot_assets.core.ingest import decode_archive  # noqa: E402
from iot_assets.synthetic import sample  # noqa: E402
from iot_assets.synthetic.inject import inject  # noqa: E402

FIRST_DAY = date(2019, 6, 25)


def build_lake(raw: Path, lake: Path, first_day: date, last_day: date) -> None:
    """Decode every archive in `raw`, clean, and write clean_flows and device_windows per day."""
    archives, errors = find_archives(raw)
    if errors:
        raise SystemExit(f"{raw}: {errors}")
    frames, macs = [], {}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        for archive in archives:
            summary = decode_archive(archive, Path(tmp) / archive.name, first_day, last_day)
            if summary.error:
                raise SystemExit(f"{archive.name}: {summary.error}")
            macs[archive.name] = summary.local_mac
            frames.append(pq.read_table(Path(tmp) / archive.name / "flows.parquet").to_pandas())
    clean, _ = to_device_centric(pd.concat(frames, ignore_index=True), macs)
    day_of = clean["flow_start"].dt.strftime("%Y-%m-%d")
    previous = None
    for day in sorted(day_of.unique()):
        flows = clean[day_of == day].reset_index(drop=True)
        windows = build_windows(flows, previous, day)
        for table, frame in (("clean_flows", flows), ("device_windows", windows)):
            out = lake / table / f"day={day}"
            out.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(out / "part-0.parquet", index=False)
        previous = flows
        print(f"{day}: {len(flows):,} flows, {len(windows):,} windows", flush=True)


def rewindow(source: Path, out: Path) -> None:
    """Device windows rebuilt from a lake's clean flows with this checkout's features; the clean
    flows and episodes are linked, not copied."""
    days = sorted(p.name.removeprefix("day=") for p in (source / "lake" / "clean_flows").glob("day=*"))
    (out / "lake").mkdir(parents=True, exist_ok=True)
    for name, target in (("lake/clean_flows", source / "lake" / "clean_flows"), ("episodes", source / "episodes")):
        link = out / name
        if not link.exists() and target.exists():
            link.symlink_to(target)
    previous = None
    for day in days:
        flows = pd.read_parquet(source / "lake" / "clean_flows" / f"day={day}")
        windows = build_windows(flows, previous, day)
        target = out / "lake" / "device_windows" / f"day={day}"
        target.mkdir(parents=True, exist_ok=True)
        windows.to_parquet(target / "part-0.parquet", index=False)
        previous = flows
    print(f"{out}: windows of {len(days)} days rebuilt from {source}")


def sample_injected(out: Path, days: int, scale: float, seed: int, episode_seed: int) -> None:
    raw, episodes = out / "raw", out / "episodes"
    shutil.rmtree(out, ignore_errors=True)
    sample.generate(raw, FIRST_DAY, days, scale=scale, seed=seed)
    archives, _ = find_archives(raw)
    for archive in archives:
        path, _ = inject(archive, episodes, episode_seed)
        os.replace(path, archive.parts[0])
    build_lake(raw, out / "lake", FIRST_DAY, FIRST_DAY + timedelta(days=days - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample-injected")
    s.add_argument("out", type=Path)
    s.add_argument("--days", type=int, default=14)
    s.add_argument("--scale", type=float, default=0.05)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--episode-seed", type=int, default=11)
    r = sub.add_parser("rewindow")
    r.add_argument("source", type=Path)
    r.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "rewindow":
        rewindow(args.source, args.out)
    else:
        sample_injected(args.out, args.days, args.scale, args.seed, args.episode_seed)


if __name__ == "__main__":
    main()
