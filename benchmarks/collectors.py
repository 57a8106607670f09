"""Speed of the collector readers, against the tools' own floor in the same run.

    python benchmarks/collectors.py [--records 1000000] [--ipfix-copies 100]

Builds the input from the synthetic pcap (no downloaded data): `nfpcapd -r` turns it into
nfcapd files, `nfdump -w` merges them into one file, copied (as nfcapd.YYYYMMDDhhmm files, a
day of 5-minute files and more) until the directory holds `--records` records. Then:
  floor      `nfdump -N -6 -q -R DIR -o <the reader's fmt>` to /dev/null: nfdump alone;
  json       `nfdump -R DIR -o json` and orjson.loads of its output: the other way to read nfdump;
  reader     `nfcapd.read_nfcapd_files` (three nfdump calls per file, parsing, the ledger),
             then `stitch_biflows` over all records.
For IPFIX files: softflowd's export of the pcap (captured from 127.0.0.1) concatenated
`--ipfix-copies` times, read by `ipfix_file.read_ipfix_file` against `ipfixDump --stats`.
Prints seconds, records per second and the ratios. Needs nfdump (and softflowd, ipfixDump for IPFIX).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iot_assets.sources import nfcapd  # noqa: E402
from iot_assets.sources.biflows import stitch_biflows  # noqa: E402
from iot_assets.sources.ipfix_file import read_ipfix_file  # noqa: E402
from iot_assets.synthetic.pcap import write_pcap  # noqa: E402

DAY = date(2019, 6, 25)
SOFTFLOWD = shutil.which("softflowd") or "/usr/sbin/softflowd"  # Debian puts it in /usr/sbin
ENV = dict(os.environ, TZ="UTC")


def timed(label: str, action):
    start = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - start
    print(f"{label:<44} {seconds:8.2f} s")
    return result, seconds


def build_nfcapd_dir(work: Path, records: int) -> tuple[Path, int]:
    pcap = write_pcap(work / "devices.pcap", DAY)
    per_file = work / "nfpcapd"
    per_file.mkdir()
    subprocess.run(["nfpcapd", "-r", str(pcap.path), "-w", str(per_file)], check=True, capture_output=True)
    merged = work / "merged"
    subprocess.run(["nfdump", "-R", str(per_file), "-w", str(merged)], check=True, capture_output=True)
    per_copy = int(nfcapd.file_statistics(merged)["Flows"])
    copies = max(1, round(records / per_copy))
    bench = work / "bench"
    bench.mkdir()
    first = datetime(2019, 6, 25)
    for i in range(copies):
        shutil.copy(merged, bench / f"nfcapd.{(first + timedelta(minutes=5 * i)):%Y%m%d%H%M}")
    return bench, copies * per_copy


def bench_nfcapd(work: Path, records: int) -> None:
    bench, total = build_nfcapd_dir(work, records)
    files = nfcapd.find_nfcapd_files(bench)
    print(f"nfcapd: {len(files)} files, {total:,} records")
    command = ["nfdump", "-N", "-6", "-q", "-R", str(bench), "-o", nfcapd.NFDUMP_FORMAT]
    _, floor = timed("floor: nfdump -o fmt > /dev/null", lambda: subprocess.run(
        command, stdout=subprocess.DEVNULL, check=True, env=ENV))

    def json_path():
        out = subprocess.run(["nfdump", "-R", str(bench), "-o", "json"], capture_output=True, check=True, env=ENV)
        return len(orjson.loads(out.stdout))

    parsed, json_seconds = timed("json: nfdump -o json + orjson.loads", json_path)
    assert parsed == total, (parsed, total)
    (read, errors), reader = timed("reader: read_nfcapd_files", lambda: nfcapd.read_nfcapd_files(files))
    assert not errors and sum(r.records.num_rows for r in read) == total
    # The copies hold the same records at the same times: for stitching, each copy is moved by a
    # day, so that it pairs as the one file does (copies at equal times would pair with each other).
    moved = []
    for i, r in enumerate(read):
        table = r.records
        for name in ("flow_start", "flow_end"):
            shifted = pc.add(table.column(name).cast(pa.int64()), i * 86_400_000).cast(table.schema.field(name).type)
            table = table.set_column(table.schema.get_field_index(name), name, shifted)
        moved.append(table)
    records_table = pa.concat_tables(moved)
    biflows, stitch = timed("stitch_biflows (copies a day apart)", lambda: stitch_biflows(records_table))
    one_file = stitch_biflows(read[0].records).num_rows
    assert biflows.num_rows == one_file * len(read), (biflows.num_rows, one_file)
    print(f"reader: {total / reader:,.0f} records/s; with stitching {total / (reader + stitch):,.0f} records/s "
          f"({biflows.num_rows:,} biflows)")
    print(f"ratios: reader / floor {reader / floor:.2f}; json / reader {json_seconds / reader:.2f}")


def bench_ipfix(work: Path, copies: int) -> None:
    if not (os.access(SOFTFLOWD, os.X_OK) and shutil.which("ipfixDump")):
        print("ipfix: skipped (needs softflowd and ipfixDump)")
        return
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(1.0)
    datagrams: list[bytes] = []

    def listen():
        while True:
            try:
                datagrams.append(receiver.recv(65535))
            except TimeoutError:
                return

    thread = threading.Thread(target=listen)
    thread.start()
    subprocess.run([SOFTFLOWD, "-d", "-r", str(work / "devices.pcap"), "-v", "10", "-A", "milli", "-T", "ether",
                    "-c", "none", "-p", str(work / "softflowd.pid"), "-n", f"127.0.0.1:{receiver.getsockname()[1]}"],
                   check=True, capture_output=True)
    thread.join()
    receiver.close()
    path = work / "softflowd.ipfix"
    path.write_bytes(b"".join(datagrams) * copies)
    _, floor = timed("floor: ipfixDump --stats", lambda: subprocess.run(
        ["ipfixDump", "--in", str(path), "--stats"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True))
    read, seconds = timed("reader: read_ipfix_file", lambda: read_ipfix_file(path))
    total = read.ledger.decoded
    print(f"ipfix: {total:,} records, {total / seconds:,.0f} records/s; reader / ipfixDump {seconds / floor:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--ipfix-copies", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("nfdump") is None or shutil.which("nfpcapd") is None:
        sys.exit("needs nfdump and nfpcapd: install the `nfdump` package")
    with tempfile.TemporaryDirectory(prefix="bench-collectors-") as tmp:
        work = Path(tmp)
        bench_nfcapd(work, args.records)
        bench_ipfix(work, args.ipfix_copies)


if __name__ == "__main__":
    main()
