"""The cost of pseudonymising at the edge: decoding an archive with and without it, same process.

    python benchmarks/pseudonymise_edge.py [--archive PATH] [--rounds 3] [--work benchmarks/out]

The archive is the real nature_remo (../shared/data/kddi-iot-2019/nature_remo.tar.gz) when it is
there, or the one given; otherwise a generated archive of the same device (two weeks at full
scale). Rounds alternate the two paths (`decode_archive` in clear, and with a `Pseudonymiser`
under a FICTIONAL key), so that a busy machine slows them alike; the median round is printed,
with the flows per second and the ratio of the two.
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
from iot_assets.core.archive import group_archives  # noqa: E402
from iot_assets.core.ingest import decode_archive  # noqa: E402
from iot_assets.core.pseudonymise import PseudonymKeys  # noqa: E402
from iot_assets.core.pseudonymiser import Pseudonymiser  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "kddi-iot-2019" / "nature_remo.tar.gz"
FIRST_DAY, LAST_DAY = date(2019, 6, 25), date(2019, 10, 10)
FICTIONAL_KEY = bytes.fromhex("a1" * 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.archive or (REAL if REAL.exists() else None)
    if path is None:
        from iot_assets.synthetic.sample import generate

        path = generate(args.work / "generated", FIRST_DAY, 14, devices=["nature_remo"])[0].paths[0]
    archives, errors = group_archives([path])
    if errors or len(archives) != 1:
        sys.exit(f"error: {path}: {'; '.join(map(str, errors)) or 'not one archive'}")
    archive = archives[0]
    sha = archive.sha256()
    pseudonymiser = Pseudonymiser(PseudonymKeys(FICTIONAL_KEY), FIRST_DAY, LAST_DAY)
    seconds: dict[str, list[float]] = {"clear": [], "pseudonymised": []}
    flows = 0
    for _ in range(args.rounds):
        for name, pz in (("clear", None), ("pseudonymised", pseudonymiser)):
            with tempfile.TemporaryDirectory(dir=args.work) as tmp:
                t0 = time.perf_counter()
                summary = decode_archive(archive, Path(tmp) / "out", FIRST_DAY, LAST_DAY, sha256=sha, pseudonymiser=pz)
                seconds[name].append(time.perf_counter() - t0)
                flows = summary.decoded
    print(f"{path.name}: {flows:,} flows decoded, median of {args.rounds} rounds")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"  {name:14s} {median:6.2f} s  {flows / median:12,.0f} flows/s")
    ratio = statistics.median(seconds["pseudonymised"]) / statistics.median(seconds["clear"])
    print(f"  pseudonymised / clear: {ratio:.2f}x the time")


if __name__ == "__main__":
    main()
