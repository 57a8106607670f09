"""Decoding speed, whole processes: `iot-assets decode` against two baselines, on the same archive.

    python benchmarks/decode.py [--archive PATH] [--rounds 3] [--work benchmarks/out]

The archive is the real nature_remo (../shared/data/kddi-iot-2019/nature_remo.tar.gz, 156 MB
of JSON) when it is there, or the one given with --archive; otherwise a generated archive
of the same device, days and volume (`iot_assets.synthetic.sample`, calibrated on the real ones).
It is decompressed once for the pyarrow baseline. Each path then runs as its own process,
timed from outside (interpreter start and imports count, as for a user), in rounds that
alternate the paths so that a busy machine slows them alike; the median round is printed:

  ours     `python -m iot_assets.cli decode ARCHIVE --out DIR`: tar.gz to typed, validated
           Parquet with rejects and a reconciliation summary
  naive    the script people usually write, from the same tar.gz to Parquet: tarfile,
           json.loads per line, a pandas DataFrame, DataFrame.to_parquet
  pyarrow  `pyarrow.json.read_json` of the already decompressed file (no gunzip, no
           untar, no conversion, no write): the parse alone
  parse    the same with our explicit schema and block size: our parse alone, the part
           of `ours` that pyarrow does

with MB/s of JSON, peak RSS, and our speed as a ratio of each (issue 9's targets: at least
3x naive, at least 0.9x pyarrow).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iot_assets.contracts.flows import RECORD_SCHEMA
from iot_assets.core.line_blocks import BLOCK_BYTES  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "kddi-iot-2019" / "nature_remo.tar.gz"

NAIVE = """
import json, sys, tarfile
import pandas as pd
archive, out = sys.argv[1:]
rows = []
with tarfile.open(archive, "r:gz") as tar:
    for line in tar.extractfile(tar.next()):
        record = json.loads(line)
        if "flows" in record:
            rows.append(record["flows"])
pd.DataFrame(rows).to_parquet(out)
"""

PYARROW = """
import sys
import pyarrow.json as pj
pj.read_json(sys.argv[1])
"""

# Our parse alone: the same file parsed with our explicit schema in our 16 MB blocks, on
# every core (no inflation, no conversion, no write): the bound of `ours` set by pyarrow.
PARSE = """
import sys
import pyarrow as pa
import pyarrow.json as pj
schema = pa.ipc.read_schema(pa.py_buffer(open(sys.argv[2], "rb").read()))
pj.read_json(sys.argv[1], read_options=pj.ReadOptions(block_size=int(sys.argv[3])),
             parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error"))
"""


def find_archive(given: Path | None, work: Path) -> Path:
    if given:
        return given
    if REAL.exists():
        return REAL
    from iot_assets.synthetic import sample

    generated = work / "raw" / "nature_remo.tar.gz"
    if not generated.exists():  # the real archive's span: 108 days from 2019-06-25
        sample.generate(generated.parent, date(2019, 6, 25), 108, scale=1.0, seed=1, devices=["nature_remo"])
    return generated


def decompress(archive: Path, work: Path) -> Path:
    plain = work / (archive.name.split(".tar.gz")[0] + ".json")
    if not plain.exists() or plain.stat().st_mtime < archive.stat().st_mtime:
        with tarfile.open(archive, "r:gz") as tar, open(plain, "wb") as out:
            source = tar.extractfile(tar.next())
            while chunk := source.read(16 << 20):
                out.write(chunk)
    return plain


def run(command: list[str], root: Path = ROOT) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (all threads) and peak RSS (MB) of a whole process."""
    t0 = time.perf_counter()
    # Bytecode caches as a user's Python keeps them: with PYTHONDONTWRITEBYTECODE set (as in
    # some sandboxes and CI images), every run compiled our modules again (30 ms).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**env, "PYTHONPATH": str(root)})
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{command[:4]} failed: {stderr.decode()[-1500:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="also time `decode` from another checkout, e.g. `git archive main | tar -x -C DIR`, "
                             "in the same rounds")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    archive = find_archive(args.archive, args.work)
    plain = decompress(archive, args.work)
    json_mb = plain.stat().st_size / 1e6
    schema = args.work / "record_schema.arrow"  # our parse's schema, read without importing our modules
    schema.write_bytes(RECORD_SCHEMA.serialize().to_pybytes())
    print(f"{archive} ({'real' if archive == REAL else 'given' if args.archive else 'generated'}): "
          f"{archive.stat().st_size / 1e6:,.1f} MB gzip, {json_mb:,.1f} MB of JSON; {os.cpu_count()} cores; "
          f"{args.rounds} rounds, median")
    paths = {
        "ours": [sys.executable, "-m", "iot_assets.cli", "decode", str(archive), "--out", str(args.work / "ours")],
        "naive": [sys.executable, "-c", NAIVE, str(archive), str(args.work / "naive.parquet")],
        "pyarrow": [sys.executable, "-c", PYARROW, str(plain)],
        "parse": [sys.executable, "-c", PARSE, str(plain), str(schema), str(BLOCK_BYTES)],
    }
    roots = {name: ROOT for name in paths}
    if args.before:
        paths["before"] = [sys.executable, "-m", "iot_assets.cli", "decode", str(archive), "--out",
                           str(args.work / "before")]
        roots["before"] = args.before.resolve()
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, command in paths.items():
            results[name].append(run(command, roots[name]))
    median = {name: statistics.median(s for s, _, _ in runs) for name, runs in results.items()}
    for name, runs in results.items():
        print(f"{name:8s} {median[name]:6.2f} s  {json_mb / median[name]:6.1f} MB/s  "
              f"CPU {statistics.median(c for _, c, _ in runs):5.2f} s  peak {max(r for _, _, r in runs):,.0f} MB  "
              f"(rounds: {', '.join(f'{s:.2f}' for s, _, _ in runs)})")
    print(f"ours / naive:   {median['naive'] / median['ours']:.2f}x  (target 3x)")
    print(f"ours / pyarrow: {median['pyarrow'] / median['ours']:.2f}x  (target 0.9x)")
    print(f"ours / parse:   {median['parse'] / median['ours']:.2f}x  (our parse alone, in a process of its own)")
    if args.before:
        print(f"before / naive: {median['naive'] / median['before']:.2f}x, "
              f"before / pyarrow: {median['pyarrow'] / median['before']:.2f}x  ({args.before})")


if __name__ == "__main__":
    main()
