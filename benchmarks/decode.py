"""Decoding speed: our tar.gz -> Parquet path against two baselines, on the same bytes.

    python benchmarks/decode.py [--min-mb 500] [--work benchmarks/out]

Builds a generated archive holding at least --min-mb MB of JSON (Google Home traffic at
full scale), decompresses it once for the baselines, then times, each in its own process
so that peak memory is its own:

  naive    the path people usually write, from the same tar.gz to Parquet: tarfile,
           json.loads per line, a pandas DataFrame, DataFrame.to_parquet
  naive-parse  json.loads per line into a DataFrame, on the already decompressed file
  pyarrow  pyarrow.json.read_json of the already decompressed file (type inference)
  pyarrow+schema  the same with our explicit schema and 16 MB blocks
  ours     iot_assets.ingest.decode_archive: tar.gz -> typed, validated Parquet

and prints MB/s of JSON, peak RSS, and our speed as a ratio of each baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(work: Path, min_mb: float) -> tuple[Path, Path]:
    from iot_assets import sample

    archive = work / "raw" / "google_home_gen1.tar.gz"
    plain = work / "google_home_gen1.json"
    if not archive.exists() or not plain.exists() or plain.stat().st_size < min_mb * 1e6:
        days = 1
        while True:  # about 62 MB of JSON a day at scale 1
            written = sample.generate(archive.parent, date(2019, 7, 1), days, scale=1.0, seed=1,
                                      devices=["google_home_gen1"])
            if written[0].json_bytes >= min_mb * 1e6:
                break
            days = int(days * min_mb * 1e6 / written[0].json_bytes) + 1
        with tarfile.open(archive, "r:gz") as tar, open(plain, "wb") as out:
            member = tar.next()
            src = tar.extractfile(member)
            while chunk := src.read(16 << 20):
                out.write(chunk)
    return archive, plain


def _naive_frame(lines):
    import pandas as pd

    rows = []
    for line in lines:
        record = json.loads(line)
        if "flows" in record:
            rows.append(record["flows"])
    return pd.DataFrame(rows)


def run_naive(archive: Path, out: Path) -> int:
    with tarfile.open(archive, "r:gz") as tar:
        frame = _naive_frame(tar.extractfile(tar.next()))
    frame.to_parquet(out / "naive.parquet")
    return len(frame)


def run_naive_parse(plain: Path) -> int:
    with open(plain, "rb") as f:
        return len(_naive_frame(f))


def run_pyarrow(plain: Path) -> int:
    import pyarrow.json as pj

    return pj.read_json(plain).num_rows


def run_pyarrow_schema(plain: Path) -> int:
    import pyarrow.json as pj

    from iot_assets.decode import RECORD_SCHEMA

    options = pj.ParseOptions(explicit_schema=RECORD_SCHEMA, unexpected_field_behavior="ignore")
    return pj.read_json(plain, read_options=pj.ReadOptions(block_size=16 << 20), parse_options=options).num_rows


def run_ours(archive: Path, out: Path) -> int:
    from iot_assets.archive import find_archives
    from iot_assets.ingest import decode_archive

    (found,), _ = find_archives(archive.parent)
    summary = decode_archive(found, out, date(2019, 6, 25), date(2019, 10, 10), sha256="benchmark")
    assert summary.reconciled, summary
    return summary.decoded


def stages(archive: Path, plain: Path) -> dict[str, float]:
    """Seconds per MB of JSON for each stage of our path on its own (first 64 MB, best of 3)."""
    import numpy as np
    import pyarrow.parquet as pq
    from isal import igzip

    from iot_assets import decode

    block = plain.open("rb").read(64 << 20)
    block = block[: block.rfind(b"\n") + 1]
    mb = len(block) / 1e6

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    def inflate() -> None:
        with igzip.open(archive, "rb") as f:
            while f.read(16 << 20):
                pass

    flows = decode._read(block, decode._PARSE_STRICT).column("flows").combine_chunks()
    lines = np.arange(1, len(flows) + 1)
    decoded, _ = decode._convert(flows, lines, "x", date(2019, 6, 25), date(2019, 10, 10))
    return {
        "inflate": best(inflate) / (plain.stat().st_size / 1e6),
        "parse (all cores)": best(lambda: decode._read(block, decode._PARSE_STRICT)) / mb,
        "convert": best(lambda: decode._convert(flows, lines, "x", date(2019, 6, 25), date(2019, 10, 10))) / mb,
        "write": best(lambda: pq.write_table(decoded, plain.parent / "stage.parquet", compression="snappy")) / mb,
    }


def child(path: str, archive: Path, plain: Path, work: Path) -> None:
    """Runs one path and prints its seconds and rows as JSON (in its own process)."""
    runner = {
        "naive": lambda: run_naive(archive, work),
        "naive-parse": lambda: run_naive_parse(plain),
        "pyarrow": lambda: run_pyarrow(plain),
        "pyarrow+schema": lambda: run_pyarrow_schema(plain),
        "ours": lambda: run_ours(archive, work / "staged"),
    }[path]
    import pandas  # noqa: F401  imports are not what is measured
    import pyarrow.json  # noqa: F401

    t0 = time.perf_counter()
    rows = runner()
    print(json.dumps({"seconds": time.perf_counter() - t0, "rows": rows}))


def measure(path: str, archive: Path, plain: Path, work: Path) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--child", path, "--work", str(work)], stdout=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read().decode()
    if status != 0:
        raise SystemExit(f"{path} failed: {out}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--min-mb", type=float, default=500)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--child")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    archive, plain = build(args.work, args.min_mb)
    if args.child:
        child(args.child, archive, plain, args.work)
        return
    json_mb = plain.stat().st_size / 1e6
    print(f"archive {archive.name}: {archive.stat().st_size / 1e6:,.1f} MB gzip, {json_mb:,.1f} MB JSON; "
          f"{os.cpu_count()} cores")
    paths = ("naive", "naive-parse", "pyarrow", "pyarrow+schema", "ours")
    results = {path: measure(path, archive, plain, args.work) for path in paths}
    for path, r in results.items():
        print(f"{path:15s} {r['seconds']:7.2f} s  {json_mb / r['seconds']:7.1f} MB/s  "
              f"{r['rows']:>10,} rows  peak {r['peak_rss_mb']:,.0f} MB")
    ours = json_mb / results["ours"]["seconds"]
    for path in paths[:-1]:
        print(f"ours / {path}: {ours / (json_mb / results[path]['seconds']):.2f}x")
    # Where the time goes, and the best any path that parses with pyarrow could do here:
    # the parse already uses every core, the other stages share the cores with it.
    cost = stages(archive, plain)
    for name, seconds_per_mb in cost.items():
        print(f"stage {name:18s} {1 / seconds_per_mb:8.0f} MB/s")
    rest = sum(v for k, v in cost.items() if k != "parse (all cores)") / (os.cpu_count() or 1)
    ceiling = 1 / (cost["parse (all cores)"] + rest)
    print(f"ceiling for a tar.gz -> Parquet path parsing with pyarrow: {ceiling:.0f} MB/s = "
          f"{ceiling / (json_mb / results['pyarrow']['seconds']):.2f}x pyarrow, "
          f"{ceiling / (json_mb / results['naive']['seconds']):.1f}x naive")


if __name__ == "__main__":
    main()
