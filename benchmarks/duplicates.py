"""What finding repeated records costs the decoder: `decode_archive` with and without it, same archive.

    python benchmarks/duplicates.py [--archive PATH] [--rounds 3]

The archive is the real nature_remo (../shared/data/kddi-iot-2019/nature_remo.tar.gz) when it is
there, or the one given with --archive; otherwise a generated one. Each round decodes it twice in
this process, alternating which goes first: `with` (every block's records hashed and looked up,
`iot_assets.core.duplicates.RepeatedRecords`) and `without` (the lookup replaced by a pass-through,
the decoder as it was before issue 23). The median CPU and wall seconds are printed, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iot_assets.core import ingest
from iot_assets.core.archive import find_archives
from iot_assets.core.decode import REJECTS_SCHEMA
from iot_assets.core.duplicates import RepeatedRecords

REAL = ROOT.parent / "shared" / "data" / "kddi-iot-2019" / "nature_remo.tar.gz"


class PassThrough(RepeatedRecords):
    def split(self, flows, archive):
        return flows, REJECTS_SCHEMA.empty_table()


def decode_once(archive, out: Path, finder) -> tuple[float, float, int]:
    ingest.RepeatedRecords = finder
    t0, c0 = time.perf_counter(), time.process_time()
    summary = ingest.decode_archive(archive, out, date(2019, 6, 25), date(2019, 10, 10))
    return time.perf_counter() - t0, time.process_time() - c0, summary.decoded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", type=Path, default=REAL if REAL.exists() else None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.archive is None:
            from iot_assets.synthetic import sample

            sample.generate(Path(tmp) / "raw", date(2019, 6, 25), 14, scale=0.2, seed=0, devices=["nature_remo"])
            args.archive = Path(tmp) / "raw" / "nature_remo.tar.gz"
        archive = next(a for a in find_archives(args.archive.parent)[0] if a.name == args.archive.name.split(".tar.gz")[0])
        runs: dict[str, list[tuple[float, float]]] = {"with": [], "without": []}
        for i in range(args.rounds):
            order = [("with", RepeatedRecords), ("without", PassThrough)]
            for name, finder in order if i % 2 == 0 else reversed(order):
                wall, cpu, records = decode_once(archive, Path(tmp) / name, finder)
                runs[name].append((wall, cpu))
        print(f"archive {args.archive} ({records:,} records), {args.rounds} rounds, medians:")
        for name, times in runs.items():
            print(f"  {name:8s} wall {statistics.median(t[0] for t in times):6.2f} s  "
                  f"CPU {statistics.median(t[1] for t in times):6.2f} s")
        ratio_wall = statistics.median(t[0] for t in runs["with"]) / statistics.median(t[0] for t in runs["without"])
        ratio_cpu = statistics.median(t[1] for t in runs["with"]) / statistics.median(t[1] for t in runs["without"])
        print(f"  with / without: wall {ratio_wall:.2f}x, CPU {ratio_cpu:.2f}x")


if __name__ == "__main__":
    main()
