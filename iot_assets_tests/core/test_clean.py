"""Device-centric orientation: whichever side YAF took as source, out is what left the device."""

import pandas as pd

from iot_assets.contracts.schemas import CleanFlows
from iot_assets.core.clean import to_device_centric
from iot_assets.core.decode import decode_block
from iot_assets_tests.support.records import FIRST_DAY, LAST_DAY, flow_line

REMO = "60:01:94:54:6b:e8"


def decoded(*lines: bytes) -> pd.DataFrame:
    return decode_block(b"".join(lines), 1, "nature_remo", FIRST_DAY, LAST_DAY).flows.to_pandas()


def test_a_probe_from_the_gateway_is_inbound():
    clean, rejects = to_device_centric(decoded(flow_line()), {"nature_remo": REMO})
    row = clean.iloc[0]
    assert not row.device_initiated
    assert (row.bytes_in, row.bytes_out, row.packets_in, row.packets_out) == (156, 0, 2, 0)
    assert (row.device_port, row.remote_port, row.remote_scope) == (137, 39396, "gateway")
    assert row.device_name == "Nature Remo" and row.device_category == "Remote controller"
    assert rejects.empty


def test_a_flow_the_device_starts_is_outbound():
    line = flow_line(sourceMacAddress="60:01:94:54:6b:e8:", destinationMacAddress="38:d5:47:0c:25:d4:",
                     sourceIPv4Address="192.168.1.225", destinationIPv4Address="3.86.45.125",
                     sourceTransportPort=4162, destinationTransportPort=443, protocolIdentifier=6,
                     octetTotalCount=2733, packetTotalCount=42, reverseOctetTotalCount=5013,
                     reversePacketTotalCount=42, initialTCPFlags="S", reverseInitialTCPFlags="AS")
    clean, _ = to_device_centric(decoded(line), {"nature_remo": REMO})
    row = clean.iloc[0]
    assert row.device_initiated and row.remote_scope == "internet"
    assert (row.bytes_out, row.bytes_in, row.remote_port, row.device_port) == (2733, 5013, 443, 4162)
    assert (row.initial_tcp_flags_out, row.initial_tcp_flags_in) == (0x02, 0x12)


def test_broadcast_multicast_and_unknown_devices():
    lines = [
        flow_line(sourceMacAddress="60:01:94:54:6b:e8:", destinationMacAddress="ff:ff:ff:ff:ff:ff:",
                  sourceIPv4Address="::", destinationIPv4Address="255.255.255.255"),
        flow_line(sourceMacAddress="60:01:94:54:6b:e8:", destinationMacAddress="01:00:5e:00:00:fb:",
                  sourceIPv4Address="192.168.1.225", destinationIPv4Address="224.0.0.251"),
    ]
    clean, _ = to_device_centric(decoded(*lines), {"nature_remo": REMO})
    assert clean["remote_scope"].tolist() == ["broadcast", "multicast"]
    # An archive whose device is not in the catalogue is still oriented, and labelled unknown.
    clean, _ = to_device_centric(decoded(flow_line(destinationMacAddress="02:00:00:00:00:01:")),
                                 {"nature_remo": "02:00:00:00:00:01"})
    assert not clean.iloc[0].in_catalogue and clean.iloc[0].device_name is None


def test_flows_without_the_device_mac_are_rejected_with_the_reason():
    other = flow_line(destinationMacAddress="64:bc:0c:4b:aa:ce:")
    clean, rejects = to_device_centric(decoded(flow_line(), other), {"nature_remo": REMO})
    assert len(clean) == 1
    assert rejects[["line_number", "reason"]].to_dict("records") == [{"line_number": 2, "reason": "device_mac_absent"}]


def test_clean_rows_satisfy_the_contract(sample_dir, tmp_path):
    import pyarrow.parquet as pq

    from iot_assets.core.archive import find_archives
    from iot_assets.core.ingest import decode_archive

    archives, _ = find_archives(sample_dir)
    macs, frames = {}, []
    for archive in archives:
        summary = decode_archive(archive, tmp_path / archive.name, FIRST_DAY, LAST_DAY)
        macs[archive.name] = summary.local_mac
        frames.append(pq.read_table(tmp_path / archive.name / "flows.parquet").to_pandas())
    clean, rejects = to_device_centric(pd.concat(frames, ignore_index=True), macs)
    CleanFlows.validate(clean, lazy=True)
    assert rejects.empty and clean["device_name"].nunique() == 4


def test_rows_that_break_the_contract_are_rejected_one_by_one_with_the_check():
    """The string checks take one pass over a good column; a bad value still names its own row."""
    from iot_assets.contracts.schemas import DecodedFlows
    from iot_assets.defs.ingest.assets import _split_schema_failures, schema_failures

    flows = decoded(flow_line(), flow_line(), flow_line(), flow_line())
    clean, _ = to_device_centric(flows, {"nature_remo": REMO})
    clean.loc[1, "remote_mac"] = "38:d5:47:0c:25"          # too short for a MAC
    clean.loc[2, "device_ip"] = None
    valid, rejected, _ = _split_schema_failures(clean)
    assert valid["line_number"].tolist() == [1, 4]
    reasons = dict(zip(rejected["line_number"], rejected["reason"]))
    assert reasons == {2: "schema:remote_mac:matches(pattern=^[0-9a-f]{2}(:[0-9a-f]{2}){5}$)",
                       3: "schema:device_ip:not_nullable"}
    # Not coerced: a number where an address should be is a failure of the column's type, on its row.
    flows.loc[3, "src_ip"] = 192
    failures = schema_failures(DecodedFlows, flows)
    assert failures[["column", "rows"]].to_dict("records") == [{"column": "src_ip", "rows": 1}]
    assert failures["check"].iloc[0].startswith("dtype(")
