"""Collector readers: nfcapd files through Debian's nfdump, IPFIX files through `netflow`,
biflow stitching, and the synthetic pcap they are fed from.

The tests with real tools read a generated pcap from a file (`nfpcapd -r`, `softflowd -r`)
and send exports to 127.0.0.1 only; no packet is ever sent onto an interface. Records built
by hand here are FICTIONAL test records.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import struct
import subprocess
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from netflow.ipfix import IPFIXExportPacket

from iot_assets.contracts import catalogue
from iot_assets.sources import nfcapd
from iot_assets.sources.biflows import (
    FLOW_SCHEMA,
    FileLedger,
    SourceFileError,
    ToolMissing,
    device_identity,
    flows_for_day,
    records_table,
    stitch_biflows,
)
from iot_assets.sources.ipfix_file import read_ipfix_file
from iot_assets.sources.landing import read_landing_zone
from iot_assets.synthetic import profiles as sample
from iot_assets.synthetic.pcap import DEFAULT_DEVICES, write_pcap
from iot_assets_tests.support import collectors
from iot_assets_tests.support.collectors import (
    NFDUMP_TOOLS,
    Nfcapd,
    _ms,
    fictional_ipfix_file,
    skip_without,
    softflowd,
)

DAY = date(2019, 6, 25)
LAN_PEERS = {sample.PHONE[1], sample.PC[1], sample.TABLET[1]}








def _records(rows: list[dict]) -> pa.Table:
    """Unidirectional FICTIONAL records with the columns a collector fills."""
    names = {name for row in rows for name in row}
    columns = {name: pa.array([row.get(name) for row in rows]) for name in names}
    for name in ("flow_start", "flow_end"):
        columns[name] = pa.array([_ms(row[name]) for row in rows], pa.int64()).cast(FLOW_SCHEMA.field(name).type)
    n = len(rows)
    for name in ("reverse_packets", "reverse_bytes"):
        columns[name] = pc.fill_null(columns[name], 0) if name in columns else pa.array([0] * n)
    columns.setdefault("line_number", pa.array(range(1, n + 1)))
    columns.setdefault("archive", pa.array(["fictional"] * n))
    columns.setdefault("sampling_rate", pa.array([1] * n))
    return records_table(columns, n)


def _side(src, sport, dst, dport, start, end, packets=1, proto=17, **extra) -> dict:
    return dict(protocol=proto, src_ip=src, src_port=sport, dst_ip=dst, dst_port=dport, flow_start=start,
                flow_end=end, packets=packets, bytes=packets * 100, **extra)


# ---------------------------------------------------------------- the synthetic pcap


def test_pcap_frames_are_the_sample_devices_traffic(tmp_path):
    written = write_pcap(tmp_path / "a.pcap", DAY)
    again = write_pcap(tmp_path / "b.pcap", DAY)
    assert (tmp_path / "a.pcap").read_bytes() == (tmp_path / "b.pcap").read_bytes()
    data = (tmp_path / "a.pcap").read_bytes()
    assert struct.unpack_from("<IHHiIII", data) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    day_start = int(datetime(2019, 6, 25, tzinfo=timezone.utc).timestamp())
    offset, frames, ip_bytes, protocols = 24, 0, 0, set()
    device_macs = {catalogue.BY_ARCHIVE[name].mac for name in DEFAULT_DEVICES}
    while offset < len(data):
        seconds, _, length, _ = struct.unpack_from("<IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + length]
        offset += 16 + length
        frames += 1
        assert day_start <= seconds < day_start + 86_400
        dst_mac, src_mac = frame[:6].hex(":"), frame[6:12].hex(":")
        assert frame[12:14] == b"\x08\x00"
        ip = frame[14:34]
        assert sum(struct.unpack("!10H", ip)) % 0xFFFF == 0  # the IPv4 header checksum holds
        src_ip, dst_ip = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        device_side = src_ip if src_ip in written.device_by_ip else dst_ip
        assert device_side in written.device_by_ip
        mac = src_mac if device_side == src_ip else dst_mac
        assert catalogue.BY_ARCHIVE[written.device_by_ip[device_side]].mac == mac and mac in device_macs
        protocols.add(ip[9])
        ip_bytes += struct.unpack("!H", ip[2:4])[0]
    assert frames == written.packets == again.packets
    assert ip_bytes == written.ip_bytes
    assert protocols == {1, 6, 17}
    assert 200 <= written.flows <= 1000  # a few hundred flows over the day
    assert set(written.packets_by_device_ip) == set(written.device_by_ip)


# ---------------------------------------------------------------- stitching


def test_stitching_pairs_reversed_overlapping_records():
    records = _records([
        # A DNS query and its answer 30 ms later: one packet each, they do not overlap exactly.
        _side("192.168.1.20", 40000, "192.168.1.1", 53, "2019-06-25 10:00:00.000", "2019-06-25 10:00:00.000",
              src_mac="78:11:dc:55:76:4c"),
        _side("192.168.1.1", 53, "192.168.1.20", 40000, "2019-06-25 10:00:00.030", "2019-06-25 10:00:00.030",
              packets=1, dst_mac="78:11:dc:55:76:4c"),
        # The same endpoints an hour later, unanswered: stays alone.
        _side("192.168.1.20", 40000, "192.168.1.1", 53, "2019-06-25 11:00:00.000", "2019-06-25 11:00:00.000"),
        # A connection cut by an active timeout: two pieces per side, paired piece by piece.
        _side("192.168.1.20", 41000, "47.74.1.2", 80, "2019-06-25 12:00:00.000", "2019-06-25 12:05:00.000", 10, 6),
        _side("47.74.1.2", 80, "192.168.1.20", 41000, "2019-06-25 12:00:00.100", "2019-06-25 12:05:00.000", 8, 6),
        _side("192.168.1.20", 41000, "47.74.1.2", 80, "2019-06-25 12:05:00.001", "2019-06-25 12:08:00.000", 4, 6),
        _side("47.74.1.2", 80, "192.168.1.20", 41000, "2019-06-25 12:05:00.050", "2019-06-25 12:08:00.100", 3, 6),
        # softflowd gives both sides the same times: the higher source port is the client.
        _side("13.230.1.1", 443, "192.168.1.238", 33205, "2019-06-25 13:00:00.000", "2019-06-25 13:00:06.000", 9, 6),
        _side("192.168.1.238", 33205, "13.230.1.1", 443, "2019-06-25 13:00:00.000", "2019-06-25 13:00:06.000", 10, 6),
        # Same addresses and ports, another protocol: not a partner.
        _side("192.168.1.238", 33205, "13.230.1.1", 443, "2019-06-25 13:00:00.000", "2019-06-25 13:00:06.000", 2, 17),
        # A record that already holds both directions is left as it is.
        _side("192.168.1.225", 50000, "52.207.1.1", 443, "2019-06-25 14:00:00.000", "2019-06-25 14:00:01.000", 5, 6,
              reverse_packets=4, reverse_bytes=400),
        _side("52.207.1.1", 443, "192.168.1.225", 50000, "2019-06-25 14:00:00.500", "2019-06-25 14:00:01.000", 4, 6),
    ])
    rows = stitch_biflows(records).to_pylist()
    assert len(rows) == 8
    summary = [(r["src_ip"], r["src_port"], r["protocol"], r["packets"], r["reverse_packets"], r["line_number"])
               for r in rows]
    assert summary == [
        ("192.168.1.20", 40000, 17, 1, 1, 1),
        ("192.168.1.20", 40000, 17, 1, 0, 3),
        ("192.168.1.20", 41000, 6, 10, 8, 4),
        ("192.168.1.20", 41000, 6, 4, 3, 6),
        ("192.168.1.238", 33205, 6, 10, 9, 9),
        ("192.168.1.238", 33205, 17, 2, 0, 10),
        ("192.168.1.225", 50000, 6, 5, 4, 11),
        ("52.207.1.1", 443, 6, 4, 0, 12),
    ]
    dns = rows[0]
    assert dns["reverse_delta_ms"] == 30 and dns["duration_ms"] == 30 and dns["reverse_bytes"] == 100
    assert dns["src_mac"] == "78:11:dc:55:76:4c" and dns["dst_mac"] is None
    assert rows[3]["flow_end"] == datetime(2019, 6, 25, 12, 8, 0, 100_000, tzinfo=timezone.utc)
    assert rows[3]["duration_ms"] == 180_099
    # Further apart than the gap: not stitched.
    assert stitch_biflows(records.slice(0, 2), max_gap_ms=10).num_rows == 2


def test_a_day_takes_the_biflows_that_start_on_it_across_midnight():
    records = _records([
        _side("192.168.1.20", 40001, "8.8.8.8", 53, "2019-06-25 23:59:59.990", "2019-06-25 23:59:59.990"),
        _side("8.8.8.8", 53, "192.168.1.20", 40001, "2019-06-26 00:00:00.020", "2019-06-26 00:00:00.020"),
        _side("192.168.1.20", 40002, "8.8.8.8", 53, "2019-06-26 00:00:00.500", "2019-06-26 00:00:00.500"),
        _side("192.168.1.20", 40003, "8.8.8.8", 53, "2019-06-25 00:00:00.000", "2019-06-25 00:00:00.000"),
    ])
    day = flows_for_day(records, DAY)
    assert day.column("src_port").to_pylist() == [40003, 40001]
    assert day.column("reverse_packets").to_pylist() == [0, 1]
    assert flows_for_day(records, DAY + timedelta(days=1)).column("src_port").to_pylist() == [40002]


def test_device_identity_is_the_mac_else_the_private_address_else_the_line():
    records = _records([
        _side("192.168.1.20", 40000, "47.74.1.2", 80, "2019-06-25 10:00:00", "2019-06-25 10:00:01",
              src_mac="78:11:dc:55:76:4c"),
        _side("47.74.1.2", 80, "10.0.0.7", 40000, "2019-06-25 10:00:00", "2019-06-25 10:00:01"),
        _side("192.168.1.1", 39396, "192.168.1.225", 137, "2019-06-25 10:00:00", "2019-06-25 10:00:01"),
        _side("203.0.113.9", 5000, "198.51.100.7", 80, "2019-06-25 10:00:00", "2019-06-25 10:00:01"),
    ])
    identity = device_identity(records, gateway_ips=frozenset({"192.168.1.1"})).to_pylist()
    assert identity == [
        {"device_key": "78:11:dc:55:76:4c", "device_ip": "192.168.1.20", "identity": "mac"},
        {"device_key": "10.0.0.7", "device_ip": "10.0.0.7", "identity": "private_ip"},
        {"device_key": "192.168.1.225", "device_ip": "192.168.1.225", "identity": "private_ip"},
        {"device_key": None, "device_ip": None, "identity": "line"},
    ]


def test_a_ledger_reconciles_counts_and_totals():
    ledger = FileLedger(file="nfcapd.201906250000", source="nfcapd", collector_records=3, collector_packets=30,
                        collector_bytes=3000, decoded=3, decoded_packets=30, decoded_bytes=3000)
    assert ledger.reconciled and FileLedger.from_json(ledger.to_json()) == ledger
    ledger.decoded_packets = 29  # a packet lost between nfdump's summary and the records
    assert not ledger.reconciled
    ledger.decoded, ledger.rejected = 2, 1  # with a reject the totals cannot agree; the counts must
    assert ledger.reconciled
    ledger.rejected = 0
    assert not ledger.reconciled
    failed = FileLedger.failed(SourceFileError("nfcapd.201906250005", "not a readable nfcapd file: bad magic"),
                               "nfcapd")
    assert not failed.reconciled and failed.error.endswith("bad magic") and failed.collector_records is None


# ---------------------------------------------------------------- nfdump's output, parsed


def test_nfdump_lines_are_converted_and_bad_ones_rejected():
    # FICTIONAL nfdump output in NFDUMP_FORMAT, padded as nfdump pads it.
    lines = [
        "2019-06-25 04:08:01.511|2019-06-25 04:09:48.090|6    |   192.168.1.238| 33164|  54.250.119.160|  8883|"
        "      80|    5600|       0|       0|...AP.SF|80:C5:F2:0B:AA:A9|38:d5:47:0c:25:d4|     0|     0|   0|     1",
        "2019-06-25 04:10:00.000|2019-06-25 04:10:00.000|1    |   192.168.1.238|     0|     192.168.1.1|   3.3|"
        "      10|     560|       0|       0|........|00:00:00:00:00:00|00:00:00:00:00:00|     0|     0|   0|     1",
        "2019-06-25 04:11:00.000|2019-06-25 04:10:00.000|17   |   192.168.1.238|    53|     192.168.1.1|    53|"
        "      10|     560|       0|       0|........|00:00:00:00:00:00|00:00:00:00:00:00|     0|     0|   0|     1",
        "2019-06-25 04:12:00.000|2019-06-25 04:12:00.000|17   |   192.168.1.238|    x3|     192.168.1.1|    53|"
        "      10|     560|       0|       0|........|00:00:00:00:00:00|00:00:00:00:00:00|     0|     0|   0|     1",
        "2019-06-25 04:13:00.000|2019-06-25 04:13:00.000|17   |   192.168.1.238|    53|     192.168.1.1|    53|"
        "       7|     560|       0|       0|........|00:00:00:00:00:00|00:00:00:00:00:00|     0|     0|   0|     1",
        "No matching flows",
    ]
    records, rejects = nfcapd.parse_nfdump_lines("\n".join(lines).encode(), "nfcapd.201906250405", {1: 10})
    rows = records.to_pylist()
    assert [r["line_number"] for r in rows] == [1, 2]
    first, icmp = rows
    assert first["flow_start"] == datetime(2019, 6, 25, 4, 8, 1, 511_000, tzinfo=timezone.utc)
    assert first["duration_ms"] == 106_579
    assert (first["packets"], first["bytes"], first["sampling_rate"]) == (8, 560, 10)
    assert first["union_tcp_flags"] == 0x1B  # ACK PSH SYN FIN
    assert (first["src_mac"], first["dst_mac"]) == ("80:c5:f2:0b:aa:a9", "38:d5:47:0c:25:d4")
    assert (icmp["protocol"], icmp["dst_port"], icmp["src_mac"], icmp["union_tcp_flags"]) == (1, 3 * 256 + 3, None, 0)
    assert rejects.to_pydict()["line_number"] == [3, 4, 5]
    assert rejects.to_pydict()["reason"] == ["end_before_start", "bad_number:src_port",
                                              "not_divisible_by_sampling_rate"]
    assert all(r["archive"] == "nfcapd.201906250405" for r in rows + rejects.to_pylist())


def test_a_line_with_a_wrong_number_of_fields_is_rejected_alone():
    good = ("2019-06-25 04:13:00.000|2019-06-25 04:13:00.000|17|192.168.1.238|53|192.168.1.1|53|1|60|0|0|........|"
            "00:00:00:00:00:00|00:00:00:00:00:00|0|0|0|0")
    records, rejects = nfcapd.parse_nfdump_lines(f"{good}\n{good}|extra\n{good}\n".encode(), "nfcapd.201906250410")
    assert records.column("line_number").to_pylist() == [1, 3]
    assert rejects.to_pylist()[0]["line_number"] == 2 and rejects.to_pylist()[0]["reason"] == "wrong_field_count"


def test_nfdump_missing_says_which_package_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(nfcapd.shutil, "which", lambda name: None)
    with pytest.raises(ToolMissing, match=r"install the `nfdump` package"):
        nfcapd.read_nfcapd_files([tmp_path / "nfcapd.201906250000"])


# ---------------------------------------------------------------- IPFIX files built by hand










def test_ipfix_file_decodes_flows_with_the_stated_sampling_rate(tmp_path):
    path = tmp_path / "fictional.ipfix"
    path.write_bytes(fictional_ipfix_file(3))
    read = read_ipfix_file(path)
    assert read.messages == 2 and read.data_records_by_template == {256: 1, 1024: 3}
    assert read.ledger.reconciled and read.ledger.collector_records == 3 and read.ledger.other_records == 1
    rows = read.records.to_pylist()
    assert [r["line_number"] for r in rows] == [2, 3, 4]
    assert [(r["src_port"], r["packets"], r["bytes"], r["sampling_rate"]) for r in rows] == [
        (40000, 1, 100, 10), (40001, 2, 200, 10), (40002, 3, 300, 10)]
    assert rows[1]["dst_ip"] == "47.74.1.1" and rows[1]["duration_ms"] == 500
    assert (rows[0]["src_mac"], rows[0]["dst_mac"]) == ("78:11:dc:55:76:4c", "38:d5:47:0c:25:d4")
    assert read.ledger.decoded_packets == 60  # 1+2+3 packets, each standing for 10


def test_ipfix_damage_names_the_file_and_keeps_what_came_before(tmp_path):
    data = fictional_ipfix_file(3)
    cut = tmp_path / "cut.ipfix"
    cut.write_bytes(data[:-10])
    read = read_ipfix_file(cut)
    assert read.messages == 1 and read.records.num_rows == 0 and not read.ledger.reconciled
    assert re.match(r"message 2 at byte \d+ is cut short", read.ledger.error)
    foreign = tmp_path / "foreign.ipfix"
    foreign.write_bytes(np.random.default_rng(7).bytes(3000))
    with pytest.raises(SourceFileError, match=r"^foreign\.ipfix: not an IPFIX file"):
        read_ipfix_file(foreign)


# ---------------------------------------------------------------- real tools


@pytest.fixture(scope="module")
def pcap(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pcap")
    return write_pcap(directory / "devices.pcap", DAY)


def _nfdump_totals(directory: Path) -> dict[str, int]:
    out = subprocess.run(["nfdump", "-R", str(directory), "-I"], capture_output=True, text=True, check=True).stdout
    return {k.strip(): int(v) for k, _, v in (line.partition(":") for line in out.splitlines()) if v.strip().isdigit()}


@pytest.fixture(scope="module")
def nfpcapd_dir(pcap, tmp_path_factory) -> Path:
    return collectors.nfpcapd_files(pcap.path, tmp_path_factory.mktemp("nfpcapd"))


@pytest.mark.slow
@skip_without(*NFDUMP_TOOLS)
def test_pcap_through_nfpcapd_is_read_record_for_record(pcap, nfpcapd_dir):
    files = nfcapd.find_nfcapd_files(nfpcapd_dir)
    assert len(files) > 100 and all(f.name.startswith("nfcapd.20190625") for f in files)
    read, errors = nfcapd.read_nfcapd_files(files)
    assert errors == []
    assert all(r.ledger.reconciled for r in read)
    records = pa.concat_tables([r.records for r in read])
    totals = _nfdump_totals(nfpcapd_dir)
    assert records.num_rows == totals["Flows"] == sum(r.ledger.collector_records for r in read)
    assert pc.sum(records.column("packets")).as_py() == totals["Packets"] == pcap.packets
    assert pc.sum(records.column("bytes")).as_py() == totals["Bytes"] == pcap.ip_bytes
    assert records.column("src_mac").null_count == records.num_rows  # nfpcapd keeps no MACs
    biflows = flows_for_day(records, DAY)
    assert flows_for_day(records, DAY + timedelta(days=1)).num_rows == 0
    assert biflows.num_rows == stitch_biflows(records).num_rows
    stitched = pc.sum(pc.greater(biflows.column("reverse_packets"), 0)).as_py()
    assert biflows.num_rows + stitched == records.num_rows  # every record is in exactly one biflow
    assert pc.sum(biflows.column("packets")).as_py() + pc.sum(biflows.column("reverse_packets")).as_py() == pcap.packets
    days = {d.date() for d in biflows.column("flow_start").to_pylist()}
    assert days == {DAY}
    icmp = biflows.filter(pc.equal(biflows.column("protocol"), 1))
    assert icmp.num_rows > 0 and set(icmp.column("dst_port").to_pylist()) == {3 * 256 + 3}  # port unreachable
    identity = device_identity(biflows, gateway_ips=frozenset({catalogue.GATEWAY_IP}))
    assert set(identity.column("identity").to_pylist()) == {"private_ip"}
    keys = set(identity.column("device_key").to_pylist())
    assert set(pcap.device_by_ip) <= keys <= set(pcap.device_by_ip) | LAN_PEERS


@skip_without(*NFDUMP_TOOLS)
def test_bad_truncated_and_foreign_files_are_named_while_a_good_one_decodes(nfpcapd_dir, tmp_path):
    sizes = {f: f.stat().st_size for f in nfcapd.find_nfcapd_files(nfpcapd_dir)}
    good = max(sizes, key=sizes.get)
    landing = tmp_path / "raw" / "router-1"
    landing.mkdir(parents=True)
    shutil.copy(good, landing / "nfcapd.201906251200")
    (landing / "nfcapd.201906251205").write_bytes(good.read_bytes()[: sizes[good] // 2])
    (landing / "nfcapd.201906251210").write_bytes(np.random.default_rng(3).bytes(5000))
    files = nfcapd.find_nfcapd_files(tmp_path / "raw")
    read, errors = nfcapd.read_nfcapd_files(files)
    assert [r.ledger.file for r in read] == ["nfcapd.201906251200"]
    assert read[0].ledger.reconciled and read[0].records.num_rows == read[0].ledger.collector_records > 0
    assert [str(e).split(":")[0] for e in errors] == ["nfcapd.201906251205", "nfcapd.201906251210"]
    assert "not a readable nfcapd file" in str(errors[0]) and "bad magic" in str(errors[1])


@skip_without(*NFDUMP_TOOLS)
def test_the_landing_zone_reads_every_collector_file_under_raw(nfpcapd_dir, tmp_path):
    by_size = sorted(nfcapd.find_nfcapd_files(nfpcapd_dir), key=lambda f: -f.stat().st_size)
    raw = tmp_path / "raw"
    for directory in ("router-1", "router-2/2019/06", "capture"):
        (raw / directory).mkdir(parents=True)
    shutil.copy(by_size[0], raw / "router-1" / "nfcapd.201906251200")
    shutil.copy(by_size[1], raw / "router-2/2019/06" / "nfcapd.201906251200")  # the same name, another router
    (raw / "router-2/2019/06" / "nfcapd.201906251205").write_bytes(np.random.default_rng(5).bytes(4000))
    (raw / "router-2/2019/06" / "nfcapd.current.12345").write_bytes(b"being written")  # not a collector file yet
    (raw / "capture" / "home.ipfix").write_bytes(fictional_ipfix_file(4))
    (raw / "capture" / "junk.ipfix").write_bytes(b"GIF89a" + bytes(100))
    landed = read_landing_zone(raw)
    ledgers = {ledger.file: ledger for ledger in landed.ledgers}
    assert list(ledgers) == ["capture/home.ipfix", "capture/junk.ipfix", "router-1/nfcapd.201906251200",
                             "router-2/2019/06/nfcapd.201906251200", "router-2/2019/06/nfcapd.201906251205"]
    good = ["capture/home.ipfix", "router-1/nfcapd.201906251200", "router-2/2019/06/nfcapd.201906251200"]
    assert [name for name, ledger in ledgers.items() if ledger.reconciled] == good
    assert ledgers["capture/junk.ipfix"].error.startswith("not an IPFIX file")
    assert "bad magic" in ledgers["router-2/2019/06/nfcapd.201906251205"].error
    assert landed.records.num_rows == sum(ledgers[name].collector_records for name in good)
    per_file = pc.value_counts(landed.records.column("archive")).to_pylist()
    assert {item["values"]: item["counts"] for item in per_file} == {name: ledgers[name].decoded for name in good}
    day = flows_for_day(landed.records, DAY)
    assert set(day.column("archive").to_pylist()) == set(good)
    assert pc.sum(day.column("packets")).as_py() + pc.sum(day.column("reverse_packets")).as_py() == \
        pc.sum(landed.records.column("packets")).as_py()






@skip_without("nfcapd", "nfdump", "softflowd")
def testsoftflowd_live_into_nfcapd_loses_nothing(pcap, tmp_path):
    directory = tmp_path / "live"
    directory.mkdir()
    with Nfcapd(directory) as collector:
        flows, exported_records, packets = softflowd(pcap.path, collector.port)
    read, errors = nfcapd.read_nfcapd_files(nfcapd.find_nfcapd_files(directory))
    assert errors == [] and all(r.ledger.reconciled for r in read)
    records = pa.concat_tables([r.records for r in read])
    assert records.num_rows == exported_records
    assert packets == pcap.packets == pc.sum(records.column("packets")).as_py()
    assert records.column("src_mac").null_count == 0 and records.column("dst_mac").null_count == 0
    biflows = flows_for_day(records, DAY)
    assert biflows.num_rows == flows  # softflowd's own flows, rebuilt by the stitching
    identity = device_identity(biflows, gateway_ips=frozenset({catalogue.GATEWAY_IP}))
    assert set(identity.column("identity").to_pylist()) == {"mac"}
    for row, ident in zip(biflows.to_pylist(), identity.to_pylist()):
        if ident["device_ip"] in pcap.device_by_ip:
            assert ident["device_key"] == catalogue.BY_ARCHIVE[pcap.device_by_ip[ident["device_ip"]]].mac


class _UdpFile:
    """A UDP listener on a free loopback port appending each datagram to a file: an IPFIX file."""

    def __init__(self, path: Path):
        self.path = path
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.datagrams = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with open(self.path, "wb") as out:
            while True:
                try:
                    data = self.socket.recv(65535)
                except TimeoutError:
                    if self._stop.is_set():
                        return
                    continue
                out.write(data)
                self.datagrams += 1

    def __enter__(self) -> _UdpFile:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.socket.close()


def _ipfix_dump_stats(path: Path) -> tuple[int, int, dict[int, int]]:
    out = subprocess.run(["ipfixDump", "--in", str(path), "--stats"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    header = re.search(r"File Stats: (\d+) Messages, (\d+) Data Records", out)
    per_template = {int(m[1]): int(m[2]) for m in re.finditer(r"^\s*(\d+) \(0x[0-9a-f]+\)\s*\|\s*(\d+)", out, re.M)}
    return int(header[1]), int(header[2]), {t: n for t, n in per_template.items() if n}


@skip_without("softflowd", "ipfixDump")
def testsoftflowd_ipfix_file_matches_ipfixdump(pcap, tmp_path):
    path = tmp_path / "softflowd.ipfix"
    with _UdpFile(path) as listener:
        flows, exported_records, packets = softflowd(pcap.path, listener.port)
    read = read_ipfix_file(path)
    messages, data_records, per_template = _ipfix_dump_stats(path)
    assert read.messages == messages == listener.datagrams
    assert read.data_records_by_template == per_template
    assert read.ledger.collector_records + read.ledger.other_records == data_records
    assert read.ledger.reconciled and read.ledger.decoded == exported_records
    assert pc.sum(read.records.column("packets")).as_py() == packets == pcap.packets
    assert pc.sum(read.records.column("bytes")).as_py() == pcap.ip_bytes
    assert read.records.column("src_mac").null_count == 0
    assert set(read.records.column("sampling_rate").to_pylist()) == {1}
    assert flows_for_day(read.records, DAY).num_rows == flows
    icmp = read.records.filter(pc.equal(read.records.column("protocol"), 1))
    assert icmp.num_rows > 0 and set(icmp.column("dst_port").to_pylist()) == {3 * 256 + 3}
    # Value for value what netflow's own record-by-record parse gives.
    assert [_as_netflow_gives(row) for row in read.records.to_pylist()] == _netflow_flows(path)


def _netflow_flows(path: Path) -> list[tuple]:
    """Flow records of an IPFIX file as `netflow.ipfix.IPFIXExportPacket` parses them, in file order."""
    data, offset, templates, options, flows = path.read_bytes(), 0, {}, set(), []
    while offset < len(data):
        length = struct.unpack_from("!H", data, offset + 2)[0]
        packet = IPFIXExportPacket(data[offset:offset + length], templates)
        for ipfix_set in packet.sets:
            if ipfix_set.header.set_id == 3:
                options.update(record.template_id for record in ipfix_set.records)
            elif ipfix_set.header.set_id >= 256 and ipfix_set.header.set_id not in options:
                for record in ipfix_set.records:
                    d = record.data
                    mac = lambda value: value.to_bytes(6, "big").hex(":")  # noqa: E731
                    flows.append((d["flowStartMilliseconds"], d["flowEndMilliseconds"], d["protocolIdentifier"],
                                  str(ipaddress.ip_address(d["sourceIPv4Address"])), d.get("sourceTransportPort", 0),
                                  str(ipaddress.ip_address(d["destinationIPv4Address"])),
                                  d.get("destinationTransportPort") or d.get("icmpTypeCodeIPv4", 0),
                                  d["packetDeltaCount"], d["octetDeltaCount"],
                                  mac(d["sourceMacAddress"]), mac(d["postDestinationMacAddress"])))
        offset += length
    return flows


def _as_netflow_gives(row: dict) -> tuple:
    def ms(when: datetime) -> int:
        return int(when.timestamp() * 1000)
    return (ms(row["flow_start"]), ms(row["flow_end"]), row["protocol"], row["src_ip"], row["src_port"],
            row["dst_ip"], row["dst_port"], row["packets"], row["bytes"], row["src_mac"], row["dst_mac"])


@skip_without("softflowd", "ipfixDump", "nfcapd", "nfdump")
def test_sampling_rate_travels_with_the_records(pcap, tmp_path):
    path = tmp_path / "sampled.ipfix"
    with _UdpFile(path) as listener:
        _, exported_records, sampled_packets = softflowd(pcap.path, listener.port, "-s", "10")
    read = read_ipfix_file(path)
    assert read.ledger.reconciled and read.ledger.decoded == exported_records
    assert set(read.records.column("sampling_rate").to_pylist()) == {10}
    assert pc.sum(read.records.column("packets")).as_py() == sampled_packets < pcap.packets / 5
    # nfcapd 1.7.1 drops the options record stating the rate: its files say nothing of it ...
    plain = tmp_path / "plain"
    plain.mkdir()
    with Nfcapd(plain) as collector:
        softflowd(pcap.path, collector.port, "-s", "10")
    read_plain, _ = nfcapd.read_nfcapd_files(nfcapd.find_nfcapd_files(plain))
    records = pa.concat_tables([r.records for r in read_plain])
    assert records.num_rows == exported_records and set(records.column("sampling_rate").to_pylist()) == {1}
    # ... unless nfcapd is told the rate (-s): it scales the counts and keeps a sampler that nfdump -E shows.
    told = tmp_path / "told"
    told.mkdir()
    with Nfcapd(told, "-s", "10") as collector:
        softflowd(pcap.path, collector.port, "-s", "10")
    read_told, _ = nfcapd.read_nfcapd_files(nfcapd.find_nfcapd_files(told))
    records = pa.concat_tables([r.records for r in read_told])
    assert set(records.column("sampling_rate").to_pylist()) == {10}
    assert pc.sum(records.column("packets")).as_py() == sampled_packets
    assert sum(r.ledger.decoded_packets for r in read_told) == sum(r.ledger.collector_packets for r in read_told) \
        == 10 * sampled_packets
