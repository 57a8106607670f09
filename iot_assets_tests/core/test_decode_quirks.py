"""Each quirk of the source is resolved in decoding; these tests show the quirk and the fix."""

from datetime import datetime, timezone

from iot_assets.contracts.flows import TCP_FLAG_BITS
from iot_assets.core.decode import decode_block
from iot_assets_tests.support.records import FIRST_DAY, LAST_DAY, flow_line, trailer


def decode(*lines: bytes):
    block = decode_block(b"".join(lines), 1, "nature_remo", FIRST_DAY, LAST_DAY)
    return block, block.flows.to_pandas()


def test_durations_named_milliseconds_hold_seconds():
    _, df = decode(flow_line(flowDurationMilliseconds=1799.999, reverseFlowDeltaMilliseconds=0.168))
    assert df.loc[0, "duration_ms"] == 1_799_999
    assert df.loc[0, "reverse_delta_ms"] == 168


def test_times_are_utc_with_milliseconds():
    _, df = decode(flow_line())
    assert df.loc[0, "flow_start"] == datetime(2019, 6, 25, 8, 36, 47, 96_000, tzinfo=timezone.utc)


def test_mac_addresses_lose_their_trailing_colon():
    _, df = decode(flow_line())
    assert df.loc[0, "src_mac"] == "38:d5:47:0c:25:d4"
    assert df.loc[0, "dst_mac"] == "60:01:94:54:6b:e8"


def test_ipv6_in_the_ipv4_fields_is_kept_and_flagged():
    _, df = decode(flow_line(sourceIPv4Address="fe80::a81e:84ff:fe06:1cb4", destinationIPv4Address="ff02::013a"),
                   flow_line(sourceIPv4Address="::", destinationIPv4Address="255.255.255.255"),
                   flow_line())
    assert df["src_ip"].tolist()[0] == "fe80::a81e:84ff:fe06:1cb4"
    assert df["ip_version"].tolist() == [6, 6, 4]


def test_hex_strings_become_integers():
    _, df = decode(flow_line(flowAttributes="08", ipClassOfService="0xc0", tcpSequenceNumber="0x7229139c",
                             vlanId="0x000", firstEightNonEmptyPacketDirections="b6"))
    row = df.loc[0]
    assert (row.flow_attributes, row.ip_class_of_service, row.tcp_sequence_number, row.vlan_id) == (8, 0xC0, 0x7229139C, 0)
    assert row.first_eight_directions == 0xB6


def test_letter_tcp_flags_become_bit_masks():
    _, df = decode(flow_line(protocolIdentifier=6, initialTCPFlags="S", unionTCPFlags="APRF",
                             reverseInitialTCPFlags="AS", reverseUnionTCPFlags="0"))
    row = df.loc[0]
    assert row.initial_tcp_flags == TCP_FLAG_BITS["S"] == 0x02
    assert row.union_tcp_flags == 0x10 | 0x08 | 0x04 | 0x01
    assert row.reverse_initial_tcp_flags == 0x12
    assert row.reverse_union_tcp_flags == 0


def test_empty_end_reason_is_named():
    _, df = decode(flow_line(flowEndReason=""), flow_line(flowEndReason="active"), flow_line(flowEndReason="eof"))
    assert df["end_reason"].tolist() == ["end_detected", "active", "eof"]


def test_varying_field_sets_decode_to_one_schema():
    no_stats = {k: ... for k in ("tcpUrgTotalCount", "smallPacketCount", "nonEmptyPacketCount", "dataByteCount",
                                 "averageInterarrivalTime", "firstNonEmptyPacketSize", "largePacketCount",
                                 "maxPacketSize", "firstEightNonEmptyPacketDirections",
                                 "standardDeviationPayloadLength", "standardDeviationInterarrivalTime",
                                 "bytesPerPacket")}
    biflow = dict(reversePacketTotalCount=2, reverseOctetTotalCount=400, reverseSmallPacketCount=0,
                  reverseNonEmptyPacketCount=2, reverseDataByteCount=344, reverseBytesPerPacket=172)
    block, df = decode(flow_line(**no_stats), flow_line(bytesPerPacket=...), flow_line(**biflow))
    assert len(df) == 3 and block.rejects.num_rows == 0
    # Statistics YAF left out: payload counts are zero, timings unknown.
    assert df["has_flow_stats"].tolist() == [False, True, True]
    assert df["payload_bytes"].tolist() == [0, 100, 100]
    assert df["mean_interarrival_ms"].isna().tolist() == [True, False, False]
    assert df["reverse_payload_bytes"].tolist() == [0, 0, 344]


def test_stats_and_tombstone_lines_are_counted_not_flows():
    block, df = decode(flow_line(), flow_line(), trailer(2))
    assert len(df) == 2
    assert (block.stats_lines, block.stats_exported) == (1, 2)
    assert block.tombstones == 1
    assert block.lines == 4


def test_line_numbers_follow_the_block_offset():
    block = decode_block(flow_line() + flow_line(), 1001, "x", FIRST_DAY, LAST_DAY)
    assert block.flows.column("line_number").to_pylist() == [1001, 1002]


def test_times_of_23_characters_are_checked_as_the_regular_expression_checks_them():
    """Times of 23 bytes take a byte-by-byte path; any other takes the regular expression."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from iot_assets.core.decode_values import _TIME_FORMAT, _time_digits

    times = ["2019-06-25 08:36:47.096", "2019-13-45 25:61:61.000", "2019-06-25T08:36:47.096",
             "2019-06-25 08:36:47,096", "2019-06-25 08:36:47.09a", "2019-06-2a 08:36:47.096",
             "2019-06-25 08:36:47.0\n6", "2019/06/25 08:36:47.096", "2019-06-25 08:36:4\u00e9.096"]
    values = pa.array(times, pa.string())
    digits, well_formed = _time_digits(values)  # not all 23 bytes (the é): the regular expression
    fast_digits, fast_well_formed = _time_digits(values.filter(pc.equal(pc.binary_length(values), 23)))
    expected = pc.match_substring_regex(values, _TIME_FORMAT).to_pylist()
    assert well_formed.tolist() == expected
    assert fast_well_formed.tolist() == expected[:-1]
    assert np.array_equal(fast_digits, digits[:-1])
