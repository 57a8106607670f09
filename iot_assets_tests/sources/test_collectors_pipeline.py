"""Collector files through the pipeline: the ledger per file, the day's biflows, clean flows that
name their device by its MAC or its private address.

The real-tool tests write the sample devices' traffic as a pcap and turn it into collector files
with Debian's tools (`nfpcapd -r`, or `softflowd -r` exporting IPFIX over UDP to an `nfcapd` on a
free 127.0.0.1 port); no packet is sent onto an interface. Flows built by hand here are FICTIONAL.
"""

import json
import shutil
import subprocess
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from iot_assets.contracts import catalogue
from iot_assets.contracts.schemas import CleanFlows
from iot_assets.core.clean import DECODED_COLUMNS, to_device_centric
from iot_assets.core.features import build_windows
from iot_assets.core.subscriber_lines import line_views
from iot_assets.synthetic.pcap import write_pcap
from iot_assets_tests.support import collectors
from iot_assets_tests.support.collectors import (
    NFDUMP_TOOLS,
    Nfcapd,
    fictional_ipfix_file,
    skip_without,
    softflowd,
)
from iot_assets_tests.support.definitions import assets_for, resources_for

DAY = date(2019, 6, 25)
DAY_KEY = DAY.isoformat()


def _nfdump_counts(file: Path) -> dict[str, int]:
    """`nfdump -r FILE -I`: the collector's own statistics of one file."""
    out = subprocess.run(["nfdump", "-r", str(file), "-I"], capture_output=True, text=True, check=True).stdout
    return {k.strip(): int(v) for k, _, v in (line.partition(":") for line in out.splitlines()) if v.strip().isdigit()}


def _lake(data: Path, asset: str, day: str | None = None) -> pd.DataFrame:
    folder = data / "lake" / asset
    return pd.read_parquet(folder / f"day={day}" / "part-0.parquet" if day else folder / "part-0.parquet")


def _ingest(data: Path, instance: dg.DagsterInstance | None = None):
    """collector_files, then the day's collector and clean flows, as `iot-assets run` builds them."""
    flows = assets_for()
    # In clear: these tests count each private address's packets against the pcap's. (Collector flows are
    # pseudonymised in `defs/ingest/collectors.py::_pseudonymised`; no test covers that yet.)
    resources = resources_for(data, IOT_ASSETS_PSEUDONYMISE="off")
    instance = instance or dg.DagsterInstance.ephemeral()
    files = dg.materialize([flows.collector_files], resources=resources, instance=instance)
    day = dg.materialize([flows.raw_archives, flows.decoded_flows, flows.collector_files, flows.collector_flows,
                          flows.clean_flows], resources=resources, instance=instance, partition_key=DAY_KEY,
                         selection=["raw_archives", "decoded_flows", "collector_flows", "clean_flows", "clean_rejects",
                                    "flow_sample"])
    return files, day


def _checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


# ---------------------------------------------------------------- fast: cleaning and sampling


def _collector_flow(**values) -> dict:
    """A FICTIONAL collector biflow of the day, as `collector_flows` stores it."""
    row = {"archive": "router-1/nfcapd.201906251200", "line_number": 1,
           "flow_start": pd.Timestamp("2019-06-25 12:00:00", tz="UTC"),
           "flow_end": pd.Timestamp("2019-06-25 12:00:01", tz="UTC"), "duration_ms": 1000,
           "reverse_delta_ms": None, "protocol": 6, "src_ip": "203.0.113.9", "src_port": 443, "packets": 3,
           "bytes": 400, "src_mac": None, "dst_ip": "192.168.1.225", "dst_port": 40001, "reverse_packets": 2,
           "reverse_bytes": 150, "dst_mac": None, "union_tcp_flags": 0x1B, "reverse_union_tcp_flags": 0x1A,
           "ip_version": 4, "end_reason": None, "has_flow_stats": False, "sampling_rate": 1,
           "device_key": "192.168.1.225", "device_ip": "192.168.1.225", "identity": "private_ip"}
    return row | values


def test_collector_flows_are_seen_from_the_device_their_identity_names():
    remo = catalogue.BY_ARCHIVE["nature_remo"].mac
    flows = pd.DataFrame([
        _collector_flow(),  # the server's side came first: the device is the destination
        _collector_flow(line_number=2, src_ip="192.168.1.20", src_port=50000, dst_ip="198.51.100.7", dst_port=123,
                        protocol=17, device_key="192.168.1.20", device_ip="192.168.1.20", sampling_rate=100),
        _collector_flow(line_number=3, src_mac=remo, dst_mac=catalogue.GATEWAY_MAC, src_ip="192.168.1.225",
                        dst_ip="203.0.113.5", device_key=remo, identity="mac"),
        _collector_flow(line_number=4, src_ip="198.51.100.1", dst_ip="203.0.113.5", device_key=None, device_ip=None,
                        identity="line"),
    ])
    clean, rejects = to_device_centric(flows, {})
    assert len(rejects) == 0
    clean = CleanFlows.validate(clean)
    assert clean["identity"].tolist() == ["private_ip", "private_ip", "mac", "line"]
    assert clean["device_ip"].tolist() == ["192.168.1.225", "192.168.1.20", "192.168.1.225", "198.51.100.1"]
    assert clean["device_mac"].isna().tolist() == [True, True, False, True]
    assert clean.loc[2, "device_name"] == "Nature Remo" and clean.loc[2, "device_mac"] == remo
    # The one key every product past cleaning groups by.
    assert clean["device_key"].tolist() == ["ip:192.168.1.225", "ip:192.168.1.20", remo, "line:198.51.100.1"]
    windows = build_windows(clean, None, DAY_KEY).set_index("device_key")
    assert sorted(windows.index) == sorted(clean["device_key"].unique())
    assert windows["identity"].to_dict() == dict(zip(clean["device_key"], clean["identity"]))
    assert windows.loc["ip:192.168.1.225", "device_name"] is None or pd.isna(windows.loc["ip:192.168.1.225", "device_name"])
    assert clean["device_initiated"].tolist() == [False, True, True, True]
    # Oriented: what the device sent is `_out` whichever side the exporter called the source.
    assert (clean.loc[0, "packets_out"], clean.loc[0, "packets_in"]) == (2, 3)
    assert (clean.loc[0, "bytes_out"], clean.loc[0, "bytes_in"]) == (150, 400)
    assert clean.loc[0, "remote_ip"] == "203.0.113.9" and clean.loc[0, "remote_port"] == 443
    assert clean["sampling_rate"].tolist() == [1, 100, 1, 1]
    assert clean["rtt_ms"].tolist() == [0, 0, 0, 0] and not clean["has_flow_stats"].any()


def test_archive_flows_and_collector_flows_clean_together():
    remo = catalogue.BY_ARCHIVE["nature_remo"].mac
    # A YAF record has every payload statistic: zeros here.
    archive_row = {name: 0 for name in DECODED_COLUMNS} | _collector_flow(archive="nature_remo", line_number=7, src_mac=catalogue.GATEWAY_MAC, dst_mac=remo,
                                  reverse_delta_ms=12, end_reason="idle", has_flow_stats=True,
                                  device_key=None, device_ip=None, identity=None, sampling_rate=None)
    other_archive = archive_row | {"line_number": 8, "dst_mac": "02:00:00:00:00:99"}  # not the archive's device
    clean, rejects = to_device_centric(pd.DataFrame([archive_row, other_archive, _collector_flow()]),
                                       {"nature_remo": remo})
    clean = CleanFlows.validate(clean)
    assert clean["identity"].tolist() == ["mac", "private_ip"]
    assert clean["archive"].tolist() == ["nature_remo", "router-1/nfcapd.201906251200"]
    assert clean["sampling_rate"].tolist() == [1, 1] and clean.loc[0, "rtt_ms"] == 12
    assert rejects[["archive", "line_number", "reason"]].values.tolist() == [["nature_remo", 8, "device_mac_absent"]]


# ---------------------------------------------------------------- real tools


@pytest.fixture(scope="module")
def pcap(tmp_path_factory):
    return write_pcap(tmp_path_factory.mktemp("pcap") / "devices.pcap", DAY)


@pytest.fixture(scope="module")
def nfpcapd_files(pcap, tmp_path_factory) -> Path:
    return collectors.nfpcapd_files(pcap.path, tmp_path_factory.mktemp("nfpcapd"))


@pytest.mark.slow
@skip_without(*NFDUMP_TOOLS)
def test_nfpcapd_files_run_through_ingest_with_every_record_accounted_for(pcap, nfpcapd_files, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(nfpcapd_files, data / "raw" / "router-1")
    files, day = _ingest(data)
    assert files.success and day.success

    ledger = _lake(data, "collector_files")
    expected = {f"router-1/{f.name}": _nfdump_counts(f) for f in sorted(nfpcapd_files.glob("nfcapd.*"))}
    assert sorted(ledger["file"]) == sorted(expected) and len(expected) > 100
    for row in ledger.itertuples():
        counts = expected[row.file]
        assert (row.collector_records, row.decoded, row.rejected) == (counts["Flows"], counts["Flows"], 0)
        assert (row.decoded_packets, row.decoded_bytes) == (counts["Packets"], counts["Bytes"])
        assert row.reconciled and row.error is None
    assert _checks(files)["collector_files_reconcile"].passed
    metadata = files.asset_materializations_for_node("collector_files")[0].metadata
    assert len(metadata["ledger"].value.records) == len(ledger)
    assert metadata["changed_days"].value == [DAY_KEY]

    records = int(ledger["decoded"].sum())
    collector = _lake(data, "collector_flows", DAY_KEY)
    stitched = int((collector["reverse_packets"] > 0).sum())
    assert len(collector) + stitched == records  # every record is in exactly one biflow of the day
    assert int(collector["packets"].sum() + collector["reverse_packets"].sum()) == pcap.packets
    checks = _checks(day)
    assert checks["collector_flows_match_staging"].passed and checks["day_reconciles"].passed
    assert checks["clean_schema"].passed

    clean = _lake(data, "clean_flows", DAY_KEY)
    rejects = _lake(data, "clean_rejects", DAY_KEY)
    assert len(clean) == len(collector) and len(rejects) == 0
    assert set(clean["identity"]) == {"private_ip"} and clean["device_mac"].isna().all()
    packets_by_device = clean.groupby("device_ip")[["packets_out", "packets_in"]].sum().sum(axis=1).to_dict()
    assert {ip: int(n) for ip, n in packets_by_device.items() if ip in pcap.device_by_ip} == pcap.packets_by_device_ip
    assert (clean["flow_start"].dt.strftime("%Y-%m-%d") == DAY_KEY).all()

    again, _ = _ingest(data)  # read once per content hash
    assert again.asset_materializations_for_node("collector_files")[0].metadata["read_now"].value == []


@pytest.mark.slow
@skip_without(*NFDUMP_TOOLS)
def test_a_truncated_and_a_foreign_file_are_named_while_the_good_one_lands(nfpcapd_files, tmp_path):
    data = tmp_path / "data"
    landing = data / "raw" / "router-1"
    landing.mkdir(parents=True)
    good = max(nfpcapd_files.glob("nfcapd.*"), key=lambda f: f.stat().st_size)
    shutil.copy(good, landing / "nfcapd.201906251200")
    (landing / "nfcapd.201906251205").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (landing / "nfcapd.201906251210").write_bytes(np.random.default_rng(3).bytes(5000))
    (data / "raw" / "capture").mkdir()
    (data / "raw" / "capture" / "not-ipfix.ipfix").write_bytes(b"GIF89a" + bytes(100))
    (data / "raw" / "capture" / "home.ipfix").write_bytes(fictional_ipfix_file(3))  # sampled 1 in 10, with MACs
    files, day = _ingest(data)
    assert files.success and day.success  # bad files fail their check, not the run

    ledger = _lake(data, "collector_files").set_index("file")
    bad = ["capture/not-ipfix.ipfix", "router-1/nfcapd.201906251205", "router-1/nfcapd.201906251210"]
    assert sorted(ledger.index[ledger["error"].notna()]) == bad
    assert ledger.loc["router-1/nfcapd.201906251200", "reconciled"] and ledger.loc["capture/home.ipfix", "reconciled"]
    assert json.loads(ledger.loc["capture/home.ipfix", "sampling_rates"]) == {"10": 3}
    check = _checks(files)["collector_files_reconcile"]
    assert not check.passed and all(name in check.description for name in bad)
    assert "router-1/nfcapd.201906251200" not in check.description and "home.ipfix" not in check.description
    assert "bad magic" in ledger.loc["router-1/nfcapd.201906251210", "error"]
    assert ledger.loc["capture/not-ipfix.ipfix", "error"].startswith("not an IPFIX file")
    report = json.loads((data / "reports" / "collector_reconciliation.json").read_text())
    assert {f["file"]: f["reconciled"] for f in report["files"]}["router-1/nfcapd.201906251200"] is True

    clean = _lake(data, "clean_flows", DAY_KEY)
    assert set(clean["archive"]) == {"router-1/nfcapd.201906251200", "capture/home.ipfix"}
    good_records = _nfdump_counts(good)["Flows"] + 3
    collector = _lake(data, "collector_flows", DAY_KEY)
    assert len(collector) + int((collector["reverse_packets"] > 0).sum()) == good_records
    home = clean[clean["archive"] == "capture/home.ipfix"]
    assert home["sampling_rate"].tolist() == [10, 10, 10] and set(home["identity"]) == {"mac"}
    assert set(home["device_mac"]) == {"78:11:dc:55:76:4c"} and set(home["device_ip"]) == {"192.168.1.20"}
    assert home["packets_out"].tolist() == [1, 2, 3]  # the exporter's counts; the rate says what they stand for


@pytest.mark.slow
@skip_without("nfcapd", "nfdump", "softflowd")
def testsoftflowd_exports_live_into_nfcapd_and_nothing_is_lost_to_the_lake(pcap, tmp_path):
    data = tmp_path / "data"
    directory = data / "raw" / "router-1"
    directory.mkdir(parents=True)
    with Nfcapd(directory) as collector:
        flows, exported_records, packets = softflowd(pcap.path, collector.port)
    files, day = _ingest(data)
    assert files.success and day.success and _checks(files)["collector_files_reconcile"].passed

    ledger = _lake(data, "collector_files")
    assert int(ledger["decoded"].sum()) == int(ledger["collector_records"].sum()) == exported_records
    assert int(ledger["decoded_packets"].sum()) == packets == pcap.packets
    collector_day = _lake(data, "collector_flows", DAY_KEY)
    assert len(collector_day) == flows  # softflowd's own flows, rebuilt by the stitching
    clean = _lake(data, "clean_flows", DAY_KEY)
    assert len(clean) == flows and set(clean["identity"]) == {"mac"}
    by_device = clean[clean["device_ip"].isin(list(pcap.device_by_ip))]
    names = {ip: catalogue.BY_ARCHIVE[archive].name for ip, archive in pcap.device_by_ip.items()}
    assert (by_device["device_name"] == by_device["device_ip"].map(names)).all()
    assert set(by_device["device_name"]) == set(names.values())


def test_line_views_honour_the_sampling_rate_the_exporter_stated():
    membership = pd.DataFrame({"line_id": ["line-1"], "device_mac": [catalogue.BY_ARCHIVE["nature_remo"].mac],
                               "since": [None]})
    flows = []
    for i, rate in enumerate([1, 100]):
        flows.append({"device_mac": membership["device_mac"][0], "flow_start": pd.Timestamp("2019-06-25 10:00", tz="UTC")
                      + pd.Timedelta(minutes=i), "flow_end": pd.Timestamp("2019-06-25 10:05", tz="UTC"),
                      "remote_ip": "203.0.113.9", "remote_port": 443, "protocol": 6, "bytes_out": 1000 * (i + 1),
                      "bytes_in": 2000, "packets_out": 10 * (i + 1), "packets_in": 20, "sampling_rate": rate,
                      "remote_scope": "internet"})
    views = line_views(pd.DataFrame(flows), membership, DAY_KEY, rates=(1, 100))
    stated = views[views["flow_start"] == flows[1]["flow_start"]]
    # Sampled 1:100 by its exporter: absent from the unsampled view, its counts scaled by 100 in the 1:100 view.
    assert stated["sampling_rate"].tolist() == [100]
    assert (stated["packets_out"].iloc[0], stated["bytes_out"].iloc[0]) == (2000, 200_000)
    unsampled = views[(views["flow_start"] == flows[0]["flow_start"]) & (views["sampling_rate"] == 1)]
    assert unsampled["packets_out"].tolist() == [10]


def test_the_landing_zone_sensor_notices_a_new_collector_file(tmp_path):
    from iot_assets_tests.support.definitions import definitions_for

    resources = {"archives": resources_for(tmp_path)["archives"]}
    archive_sensor = definitions_for(tmp_path).get_sensor_def("archive_sensor")
    instance = dg.DagsterInstance.ephemeral()  # where the sensor reads what the last ingest saw
    folder = tmp_path / "raw" / "router-1"
    folder.mkdir(parents=True)
    (folder / "nfcapd.current.4242").write_bytes(b"being written")  # not a collector file until nfcapd renames it
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        assert isinstance(archive_sensor(context), dg.SkipReason)
    (folder / "nfcapd.201906251200").write_bytes(b"rotated")
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        first = archive_sensor(context)
        assert isinstance(first, dg.RunRequest)
        cursor = context.cursor
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        assert isinstance(archive_sensor(context), dg.SkipReason)
    (folder / "nfcapd.201906251205").write_bytes(b"the next one")
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        second = archive_sensor(context)
        assert isinstance(second, dg.RunRequest) and second.run_key != first.run_key
