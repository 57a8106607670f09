"""What staging collector files costs over reading them, and what the content-hash cache saves.

    python benchmarks/collector_staging.py [--devices N]

Builds a day of nfcapd files from the synthetic pcap (`nfpcapd -r`, 5-minute files), then in
the same run:
  floor   `landing.read_landing_zone(raw)`: the readers alone, every file, nothing written;
  cold    `CollectorStore.stage` on every file with 2 workers, as `collector_files` runs it:
          hash, read, write records/rejects/ledger to staging;
  warm    the same again: every file's content is staged, only hashed;
  day     `collector_flows`' work for the day: read the staged records back, stitch, identity.
Prints seconds, files and records per second and the ratios to the floor. Needs nfdump.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iot_assets.defs.ingest.collectors import day_flows, ledger_table  # noqa: E402
from iot_assets.io.collectors import CollectorStore  # noqa: E402
from iot_assets.sources.landing import read_landing_zone  # noqa: E402
from iot_assets.synthetic.pcap import DEFAULT_DEVICES, write_pcap  # noqa: E402
from iot_assets.synthetic.profiles import PROFILES  # noqa: E402

DAY = date(2019, 6, 25)


def timed(action):
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=len(DEFAULT_DEVICES), help="sample devices in the pcap")
    args = parser.parse_args()
    if shutil.which("nfpcapd") is None or shutil.which("nfdump") is None:
        sys.exit("needs nfdump and nfpcapd: apt-get install nfdump")
    with tempfile.TemporaryDirectory(prefix="collector-staging-") as tmp:
        work = Path(tmp)
        devices = tuple(list(DEFAULT_DEVICES) + [d for d in sorted(PROFILES) if d not in DEFAULT_DEVICES])[: args.devices]
        pcap = write_pcap(work / "day.pcap", DAY, devices)
        raw = work / "data" / "raw" / "router-1"
        raw.mkdir(parents=True)
        subprocess.run(["nfpcapd", "-r", str(pcap.path), "-w", str(raw)], check=True, capture_output=True)
        store = CollectorStore(str(work / "data"))
        found = store.find()

        floor_s, landed = timed(lambda: read_landing_zone(work / "data" / "raw"))
        records = landed.records.num_rows

        def stage_all():
            with ThreadPoolExecutor(max_workers=2) as pool:
                return list(pool.map(store.stage, found))

        cold_s, staged = timed(stage_all)
        warm_s, again = timed(stage_all)
        assert not any(s.read_now for s in again)
        ledger = ledger_table([(f.name, s) for f, s in zip(found, staged)])
        day_s, (flows, _, _) = timed(lambda: day_flows(store, ledger, DAY.isoformat()))
        print(f"{len(found)} files, {records:,} records, {flows.num_rows:,} biflows ({len(devices)} devices)")
        for label, seconds in (("floor", floor_s), ("cold", cold_s), ("warm", warm_s), ("day", day_s)):
            print(f"{label:6s} {seconds:7.2f} s  {len(found) / seconds:8.1f} files/s  {records / seconds:10,.0f} records/s"
                  f"  {seconds / floor_s:5.2f} x floor")


if __name__ == "__main__":
    main()
