"""Compare two `iot-assets decode --out` directories: same tables, same summaries.

    python benchmarks/compare_decoded.py OLD_DIR NEW_DIR

For every archive directory in OLD_DIR: flows.parquet and rejects.parquet must hold equal
tables (`pyarrow.Table.equals`, schema metadata included, rows in the same order) and
summary.json the same counts. Exits 1 on the first difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq


def main() -> None:
    old_dir, new_dir = map(Path, sys.argv[1:3])
    archives = sorted(p.name for p in old_dir.iterdir() if (p / "summary.json").exists())
    if not archives:
        raise SystemExit(f"no decoded archive in {old_dir}")
    failed = False
    for name in archives:
        for table in ("flows.parquet", "rejects.parquet"):
            old = pq.read_table(old_dir / name / table)
            new = pq.read_table(new_dir / name / table)
            same = old.equals(new, check_metadata=True)
            print(f"{name}/{table}: {old.num_rows:,} rows, {'equal' if same else 'DIFFERENT'}")
            failed |= not same
        old_summary = json.loads((old_dir / name / "summary.json").read_text())
        new_summary = json.loads((new_dir / name / "summary.json").read_text())
        same = old_summary == new_summary
        print(f"{name}/summary.json: {'equal' if same else 'DIFFERENT'}")
        failed |= not same
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
